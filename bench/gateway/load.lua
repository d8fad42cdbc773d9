-- wrk script for bench/gateway: POSTs one chat request (streamed or not) with a bearer key,
-- optionally at a fixed rate, and writes its results as JSON to $WM_OUT.
--
-- Environment (read in every wrk Lua state):
--   WM_KEY      bearer key; with WM_KEYS=N > 1, keys WM_KEY..000000 to ..N-1 in turn
--   WM_STREAM   1 for "stream": true
--   WM_RATE     total requests per second (0 or unset: as fast as the connections go)
--   WM_THREADS  wrk's -t, to split WM_RATE between threads
--   WM_OUT      where done() writes the JSON
--
-- Fixed rate: wrk (Debian's 4.1, not wrk2) has no constant-rate mode, only delay(), called
-- after each response. Each thread keeps one schedule of send slots `period` ms apart; every
-- delay() call takes the next free slot, so requests leave at the target rate whichever
-- connection is free, as long as enough are (Little's law: connections > rate × latency).
-- Timers are whole milliseconds, so requests leave in bursts of rate/1000. Latency is
-- measured from the actual send, so a saturated target shows as a missed rate, which the
-- driver checks, not as queueing delay.

local key = os.getenv("WM_KEY") or "none"
local nkeys = tonumber(os.getenv("WM_KEYS") or "1")
local stream = os.getenv("WM_STREAM") == "1"
local rate = tonumber(os.getenv("WM_RATE") or "0")
local threads = tonumber(os.getenv("WM_THREADS") or "1")

local body = '{"model":"mock","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16'
if stream then body = body .. ',"stream":true' end
body = body .. '}'

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

if nkeys > 1 then
  local i = 0
  function request()
    i = (i + 1) % nkeys
    wrk.headers["Authorization"] = string.format("Bearer %s%06d", key, i)
    return wrk.format()
  end
end

if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } wm_timespec;
    int clock_gettime(int clk, wm_timespec *ts);
  ]]
  local ts = ffi.new("wm_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local period = 1000 * threads / rate
  local next_ms = nil
  function delay()
    local t = now_ms()
    -- A thread that fell behind catches up by at most 5 ms of backlog, then misses the rate.
    if next_ms == nil or next_ms < t - 5 then next_ms = t end
    next_ms = next_ms + period
    local d = next_ms - t
    if d <= 0 then return 0 end
    return math.floor(d)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(os.getenv("WM_OUT"), "w"))
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
  f:close()
end
