"""Our gateway and LiteLLM's proxy side by side, in front of the same zero-latency mock upstream,
driven by the same load generator (wrk). Started by bench/gateway/run, which installs and
builds what this needs; stdlib only.

Targets, each measured in the same run:
- direct:  wrk -> mock (the baseline "added latency" is measured against)
- auth:    wrk -> our gateway (key auth; metering still on, the gateway cannot turn it off) -> mock
- all:     wrk -> our gateway (auth, limits, prepaid credit, prices, metering) -> mock
- all-shm: as `all`, with the spool on /dev/shm: what the spool's fsyncs cost (--no-shm: left out)
- litellm: wrk -> LiteLLM proxy (N workers, no database) -> mock

Measures:
- throughput: closed loop, wrk -t2 at 4 and 32 connections, requests/s (median of the rounds);
- added latency at fixed rates: wrk with a paced delay() (bench/gateway/load.lua), p50 and p99 of
  a target minus those of `direct` at the same rate, measured next to each other;
- highest rate held: the highest rate of the ladder at which the target kept the rate (>= 95 %),
  had no errors, and p99 added <= 1 ms (and so did every lower rate);
- CPU: each process's CPU time per request (/proc/PID/stat), and the share of the machine other
  processes took during each measurement;
- memory: VmRSS of a gateway holding 10,000 keys of 1,000 tenants, after the config is in force
  and after requests spread over all keys.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOAD_LUA = ROOT / "bench/gateway/load.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
LITELLM_KEY = "sk-litellm-bench"
OUR_KEY = "sk-bench-000000"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# === processes ===

class Server:
    """A server started in its own process group, which `stop` ends (and only it)."""

    def __init__(self, name, argv, logdir, env=None, ready=None):
        self.name = name
        self.log = open(logdir / f"{name}.log", "w")
        out = subprocess.PIPE if ready == "line" else self.log
        self.proc = subprocess.Popen(argv, stdout=out, stderr=self.log, text=True,
                                     env=env, start_new_session=True, cwd=ROOT)
        self.url = None
        self.ready_line = ""
        if ready == "line":  # our binaries print `ready http://ADDR ...` on stdout
            self.ready_line = self.proc.stdout.readline().strip()
            m = re.match(r"ready (http://\S+)", self.ready_line)
            if not m:
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.ready_line!r}, see {self.log.name}")
            self.url = m.group(1)

    def pids(self):
        """This server's processes: the whole process group (LiteLLM has workers)."""
        pgid = self.proc.pid
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:  # field 5: pgrp
                    out.append(int(d))
        return out

    def cpu_ticks(self):
        """CPU ticks by process; a worker that came or went in between is left out."""
        ticks = {}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks

    def rss_kib(self, field="VmRSS"):
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()


def machine_busy_ticks():
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields]
    idle = vals[3] + vals[4]  # idle, iowait
    steal = vals[7] if len(vals) > 7 else 0
    return sum(vals[:8]) - idle - steal, sum(vals[:8]), steal


def wait_idle(max_wait_s):
    """Waits until the machine is nearly idle (< 15 % busy over 2 s), at most max_wait_s."""
    start = time.time()
    while True:
        b0, t0, _ = machine_busy_ticks()
        time.sleep(2)
        b1, t1, _ = machine_busy_ticks()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy < 0.15 or time.time() - start > max_wait_s:
            return busy
        log(f"  machine {busy:.0%} busy; waiting for it to settle")


# === one measurement ===

def http_json(url, body, headers, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def smoke(name, base, key):
    """One plain and one streamed request, which must succeed, before anything is measured."""
    url = base + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    status, text = http_json(url, BODY, headers)
    assert status == 200 and '"usage"' in text, (name, status, text)
    status, text = http_json(url, {**BODY, "stream": True}, headers)
    assert status == 200 and "data: [DONE]" in text and "Hello" in text, (name, status, text)


def wrk(url, key, *, stream, conns, seconds, threads, rate=0, nkeys=1, watch=(), timeout_s=5):
    """Runs wrk once; returns its JSON plus requests/s and CPU per process."""
    threads = min(threads, conns)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "WM_KEY": key, "WM_KEYS": str(nkeys), "WM_STREAM": "1" if stream else "0",
           "WM_RATE": str(rate), "WM_THREADS": str(threads), "WM_OUT": out}
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
            "--timeout", f"{timeout_s}s", "-s", str(LOAD_LUA), url + "/v1/chat/completions"]
    cpu0 = {s.name: s.cpu_ticks() for s in watch}
    busy0, total0, steal0 = machine_busy_ticks()
    t0 = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    busy1, total1, steal1 = machine_busy_ticks()
    cpu1 = {s.name: s.cpu_ticks() for s in watch}
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr.read().decode()}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    n = max(1, res["requests"])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["errors_total"] = sum(res["errors"].values())
    cpu_s = {k: sum(t - cpu0[k].get(pid, t) for pid, t in cpu1[k].items()) / CLK_TCK
             for k in cpu0}
    cpu_s["wrk"] = ru.ru_utime + ru.ru_stime
    res["cpu_us_per_req"] = {k: round(v * 1e6 / n, 1) for k, v in cpu_s.items()}
    res["cpu_cores"] = {k: round(v / wall, 2) for k, v in cpu_s.items()}
    ours = sum(cpu_s.values())
    machine = (busy1 - busy0) / CLK_TCK
    res["other_cpu_share"] = round(max(0.0, machine - ours) / (wall * NCPU), 3)
    res["steal_share"] = round((steal1 - steal0) / max(1, total1 - total0), 3)
    res["rate"] = rate
    res["conns"] = conns
    return res


RETRY = {"budget_s": 0.0}


def wrk_clean(*args, **kw):
    """wrk, measured again (while the retry budget lasts) when other processes took over 10 %
    of the machine meanwhile; keeps the least disturbed run."""
    best = wrk(*args, **kw)
    for _ in range(2):
        if best["other_cpu_share"] <= 0.10 or RETRY["budget_s"] <= 0:
            break
        log(f"    disturbed (other processes {best['other_cpu_share']:.0%}); measuring again")
        t0 = time.time()
        wait_idle(10)
        r = wrk(*args, **kw)
        RETRY["budget_s"] -= time.time() - t0
        if r["other_cpu_share"] < best["other_cpu_share"]:
            best = r
    return best


def held(r, rate):
    return r["rps"] >= 0.95 * rate and r["errors_total"] == 0


# === phases ===

def throughput_phase(targets, servers, cfg, results):
    log("throughput (closed loop)")
    for stream in (False, True):
        mode = "stream" if stream else "json"
        for conns in cfg["conns"]:
            runs = {name: [] for name in targets}
            for _ in range(cfg["rounds"]):  # interleaved, so drift hits every target alike
                for name, (url, key) in targets.items():
                    r = wrk_clean(url, key, stream=stream, conns=conns, seconds=cfg["tp_s"],
                                  threads=2, watch=servers)
                    runs[name].append(r)
                    log(f"  {mode:6} c={conns:<3} {name:7} {r['rps']:9.0f} req/s  "
                        f"p50 {r['latency_us']['p50']:6d} us  p99 {r['latency_us']['p99']:6d} us  "
                        f"err {r['errors_total']}  other-cpu {r['other_cpu_share']:.0%}")
            for name, rs in runs.items():
                results["throughput"].setdefault(mode, {}).setdefault(str(conns), {})[name] = {
                    "rps": statistics.median(r["rps"] for r in rs),
                    "runs": rs,
                }


def ladder_phase(targets, servers, cfg, results):
    """Fixed rates, lowest first; each target next to `direct`, which must hold the rate too."""
    log("fixed rates")
    for stream in (False, True):
        mode = "stream" if stream else "json"
        alive = {name for name in targets if name != "direct"}
        rows = []
        for rate in cfg["rates"]:
            if not alive:
                break
            row = {"rate": rate}
            direct = wrk_clean(targets["direct"][0], OUR_KEY, stream=stream,
                               conns=cfg["ladder_conns"], seconds=cfg["ladder_s"], threads=1,
                               rate=rate, watch=servers)
            row["direct"] = direct
            if not held(direct, rate):
                log(f"  {mode:6} {rate:6d}/s direct cannot hold the rate ({direct['rps']:.0f}/s)")
                rows.append(row)
                break
            for name in sorted(alive):
                url, key = targets[name]
                r = wrk_clean(url, key, stream=stream, conns=cfg["ladder_conns"],
                              seconds=cfg["ladder_s"], threads=1, rate=rate, watch=servers)
                r["added_p50_us"] = r["latency_us"]["p50"] - direct["latency_us"]["p50"]
                r["added_p99_us"] = r["latency_us"]["p99"] - direct["latency_us"]["p99"]
                r["held"] = held(r, rate) and r["added_p99_us"] <= 1000
                row[name] = r
                log(f"  {mode:6} {rate:6d}/s {name:5} got {r['rps']:7.0f}/s  added p50 "
                    f"{r['added_p50_us']:6d} us  p99 {r['added_p99_us']:6d} us  "
                    f"{'held' if r['held'] else 'MISSED'}  other-cpu {r['other_cpu_share']:.0%}")
                if not held(r, rate):
                    alive.discard(name)  # it cannot keep up; higher rates only take time
            rows.append(row)
        results["ladder"][mode] = rows


def highest_held(rows, name):
    best = 0
    for row in rows:
        r = row.get(name)
        if r is None or not r.get("held"):
            break
        best = row["rate"]
    return best


def litellm_phase(mock, cfg, logdir, work, results):
    exe = Path(cfg["litellm"])
    if not exe.exists():
        log(f"LiteLLM not found at {exe}; skipped")
        return
    conf = work / "litellm.yaml"
    conf.write_text(
        "model_list:\n"
        "  - model_name: mock\n"
        "    litellm_params:\n"
        "      model: openai/mock\n"
        f"      api_base: {mock.url}/v1\n"
        "      api_key: x\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n")
    port = cfg["litellm_port"]
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "DISABLE_SCHEMA_UPDATE": "True"}
    env.pop("DATABASE_URL", None)
    log(f"starting LiteLLM ({cfg['litellm_workers']} workers)")
    srv = Server("litellm", [str(exe), "--config", str(conf), "--host", "127.0.0.1", "--port",
                             str(port), "--num_workers", str(cfg["litellm_workers"])],
                 logdir, env=env)
    srv.url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                smoke("litellm", srv.url, LITELLM_KEY)
                break
            except Exception as e:  # not up yet
                if srv.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"LiteLLM did not come up ({e}); see {srv.log.name}")
                time.sleep(1)
        version = subprocess.run([str(exe.parent / "python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True).stdout.strip()
        out = {"version": version, "workers": cfg["litellm_workers"], "throughput": {},
               "fixed": {}}
        watch = (srv, mock)
        for stream in (False, True):
            mode = "stream" if stream else "json"
            wrk(srv.url, LITELLM_KEY, stream=stream, conns=4, seconds=2, threads=2)  # warm-up
            best = {"rps": 0}
            for conns in cfg["litellm_conns"]:
                r = wrk(srv.url, LITELLM_KEY, stream=stream, conns=conns, seconds=cfg["litellm_s"],
                        threads=2, watch=watch, timeout_s=10)
                out["throughput"].setdefault(mode, {})[str(conns)] = r
                log(f"  {mode:6} c={conns:<3} litellm {r['rps']:7.1f} req/s  p50 "
                    f"{r['latency_us']['p50']} us  p99 {r['latency_us']['p99']} us  "
                    f"err {r['errors_total']}")
                if r["errors_total"] == 0 and r["rps"] > best["rps"]:
                    best = r
            out["throughput"][mode]["best_rps"] = best["rps"]
            rows = []
            for rate in cfg["litellm_rates"]:
                direct = wrk(mock.url, OUR_KEY, stream=stream, conns=4, seconds=cfg["litellm_s"],
                             threads=1, rate=rate, watch=watch)
                r = wrk(srv.url, LITELLM_KEY, stream=stream, conns=4, seconds=cfg["litellm_s"],
                        threads=1, rate=rate, watch=watch, timeout_s=10)
                r["added_p50_us"] = r["latency_us"]["p50"] - direct["latency_us"]["p50"]
                r["added_p99_us"] = r["latency_us"]["p99"] - direct["latency_us"]["p99"]
                r["held"] = held(r, rate) and r["added_p99_us"] <= 1000
                rows.append({"rate": rate, "direct": direct, "litellm": r})
                log(f"  {mode:6} {rate:6d}/s litellm got {r['rps']:7.1f}/s  added p50 "
                    f"{r['added_p50_us']} us  p99 {r['added_p99_us']} us")
            out["fixed"][mode] = rows
        out["rss_kib"] = srv.rss_kib()
        results["litellm"] = out
    finally:
        srv.stop()


def memory_phase(mock, cfg, logdir, work, results, gw_all):
    log("memory: 10,000 keys of 1,000 tenants")
    # The one-key gateway gets the same warm-up, for a like-for-like baseline.
    wrk(gw_all.url, OUR_KEY, stream=False, conns=32, seconds=cfg["mem_s"], threads=2)
    one_key_warm = gw_all.rss_kib()
    spool = work / "wattmesh-bench-spool-mem"
    shutil.rmtree(spool, ignore_errors=True)
    srv = Server("gateway-mem", [str(cfg["bin"] / "bench_gateway"), "--upstream", mock.url, "--mode",
                                 "all", "--spool", str(spool), "--keys", "10000", "--tenants",
                                 "1000"], logdir, ready="line")
    try:
        at_config = srv.rss_kib()
        r = wrk(srv.url, "sk-bench-", stream=False, conns=32, seconds=cfg["mem_s"], threads=2,
                nkeys=10000, watch=(srv,))
        assert r["errors_total"] == 0, r
        results["memory"] = {
            "keys": 10000, "tenants": 1000,
            "rss_kib_config_set": at_config,
            "rss_kib_after_warmup": srv.rss_kib(),
            "hwm_kib": srv.rss_kib("VmHWM"),
            "warmup_requests": r["requests"],
            "one_key_gateway_rss_kib_at_ready": int(gw_all.ready_line.rsplit("=", 1)[1]),
            "one_key_gateway_rss_kib_after_same_warmup": one_key_warm,
            "one_key_gateway_hwm_kib": gw_all.rss_kib("VmHWM"),
        }
        log(f"  RSS {at_config / 1024:.1f} MiB with the config set, "
            f"{results['memory']['rss_kib_after_warmup'] / 1024:.1f} MiB after "
            f"{r['requests']} requests over all keys (1-key gateway: "
            f"{results['memory']['one_key_gateway_rss_kib_at_ready'] / 1024:.1f} MiB at start, "
            f"{one_key_warm / 1024:.1f} MiB after the same warm-up)")
    finally:
        srv.stop()


SYSCALLS = ["writev", "write", "recvfrom", "read", "futex", "epoll_wait", "pwrite64", "fsync",
            "fdatasync"]


def profile_phase(targets, servers, cfg, results):
    """Where a gateway's time goes, at 32 connections, non-streamed: a `perf record` (cpu-clock:
    this VM has no hardware counters) split by thread and shared object, the hottest symbols
    with their callees, and system calls and context switches per request (`perf stat`)."""
    results["profiles"] = {}
    for srv in servers:
        if not srv.name.startswith("gateway-"):
            continue
        name = srv.name.removeprefix("gateway-")
        data = ROOT / f"target/bench/gateway/perf-{name}.data"
        secs = str(max(1, cfg["tp_s"] - 1))
        events = ",".join([f"syscalls:sys_enter_{c}" for c in SYSCALLS] + ["context-switches"])
        record = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-o",
                                   str(data), "-p", str(srv.proc.pid), "--", "sleep", secs],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stat = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p",
                                 str(srv.proc.pid), "--", "sleep", secs],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        r = wrk(targets[name][0], targets[name][1], stream=False, conns=32, seconds=cfg["tp_s"],
                threads=2, watch=(srv,))
        record.wait()
        counts = {}
        for line in stat.communicate()[1].splitlines():
            f = line.split(",")
            if len(f) > 2 and f[0].replace(".", "").isdigit():
                counts[f[2].removeprefix("syscalls:sys_enter_")] = float(f[0])
        n = r["rps"] * float(secs)
        per_req = {k: round(v / n, 2) for k, v in counts.items()}
        report = ["# perf stat: per request", json.dumps(per_req), ""]
        for sort, extra in (("comm,dso", ["--no-children"]),
                            ("symbol", ["--children", "--percent-limit", "3"])):
            report.append(subprocess.run(
                ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "-g", "none",
                 *extra], capture_output=True, text=True).stdout)
        path = ROOT / f"target/bench/gateway-profile-{name}.txt"
        path.write_text("\n".join(report))
        data.unlink()
        results["profiles"][name] = {"file": str(path.relative_to(ROOT)), "rps": r["rps"],
                                     "per_request": per_req,
                                     "cpu_us_per_req": r["cpu_us_per_req"][srv.name]}
        log(f"  profile of {name}: {r['rps']:.0f} req/s, {r['cpu_us_per_req'][srv.name]} us CPU "
            f"per request, per request {per_req}; {path.relative_to(ROOT)}")


# === report ===

def report(results):
    tp = results["throughput"]
    names = [t for t in ("direct", "auth", "all", "all-shm")
             if t in next(iter(next(iter(tp.values())).values()))]
    lines = ["", "Throughput, closed loop (requests/s; wrk -t2)", ""]
    lines.append(f"{'':14}" + "".join(f"{t:>11}" for t in names) + f"{'all/auth':>10}")
    for mode, by_conns in tp.items():
        for conns, by_t in by_conns.items():
            row = [by_t[t]["rps"] for t in names]
            lines.append(f"{mode + ' c=' + conns:14}" + "".join(f"{v:11.0f}" for v in row) +
                         f"{by_t['all']['rps'] / by_t['auth']['rps']:10.2f}")
    lines += ["", "Added latency at fixed rates (us: p50/p99 of the target minus those of direct;"
              f" wrk -t1 -c{results['config']['ladder_conns']})", ""]
    for mode, rows in results["ladder"].items():
        for row in rows:
            d = row["direct"]["latency_us"]
            cells = [f"{mode:6} {row['rate']:6d}/s  direct p50 {d['p50']:5d} p99 {d['p99']:5d}"]
            for t in names[1:]:
                if t in row:
                    r = row[t]
                    cells.append(f"{t} +{r['added_p50_us']}/+{r['added_p99_us']}"
                                 f"{'' if r['held'] else ' MISSED'}")
            lines.append("  ".join(cells))
    s = results["summary"]
    lines += ["", "Summary", json.dumps(s, indent=2)]
    print("\n".join(lines))


def summarize(results):
    tp = results["throughput"]
    s = {}
    for mode in tp:
        for conns in tp[mode]:
            t = tp[mode][conns]
            s[f"all_over_auth_{mode}_c{conns}"] = round(t["all"]["rps"] / t["auth"]["rps"], 3)
    names = [t for t in ("auth", "all", "all-shm")
             if any(t in row for rows in results["ladder"].values() for row in rows)]
    for mode, rows in results["ladder"].items():
        for t in names:
            s[f"highest_held_{t}_{mode}"] = highest_held(rows, t)
    lit = results.get("litellm")
    if lit:
        for mode in ("json", "stream"):
            best = lit["throughput"][mode]["best_rps"]
            s[f"litellm_best_rps_{mode}"] = round(best, 1)
            held_rates = [row["rate"] for row in lit["fixed"][mode] if row["litellm"]["held"]]
            s[f"litellm_highest_held_{mode}"] = max(held_rates, default=0)
            for t in ("auth", "all"):
                ours = s[f"highest_held_{t}_{mode}"]
                s[f"{t}_held_over_litellm_best_{mode}"] = round(ours / best, 1) if best else None
                c = max(tp[mode], key=lambda k: tp[mode][k][t]["rps"])
                s[f"{t}_max_rps_over_litellm_best_{mode}"] = (
                    round(tp[mode][c][t]["rps"] / best, 1) if best else None)
    if "memory" in results:
        s["rss_mib_10k_keys_1k_tenants"] = round(results["memory"]["rss_kib_after_warmup"] / 1024, 1)
    results["summary"] = s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a ~1 minute smoke version")
    ap.add_argument("--profile", action="store_true", help="perf profiles of both gateways")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the 10,000-key memory figure")
    ap.add_argument("--no-shm", dest="shm", action="store_false",
                    help="leave out `all-shm` (everything on, spool on /dev/shm: no fsync cost)")
    ap.add_argument("--out", default=str(ROOT / "target/bench/gateway.json"))
    ap.add_argument("--litellm", default=str(ROOT / "target/bench/litellm-venv/bin/litellm"))
    ap.add_argument("--litellm-workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="tokio worker threads of gateway, mock")
    a = ap.parse_args()

    if a.quick:
        cfg = dict(rounds=1, conns=[32], tp_s=2, rates=[2000, 10000], ladder_s=2, ladder_conns=16,
                   litellm_conns=[4], litellm_s=3, litellm_rates=[10], mem_s=2, wait_idle_s=10, retry_s=0)
    else:
        cfg = dict(rounds=2, conns=[4, 32], tp_s=5,
                   rates=[500, 1000, 2500, 5000, 7500, 10000, 12500, 15000, 20000],
                   ladder_s=3, ladder_conns=16, litellm_conns=[4, 16], litellm_s=8,
                   litellm_rates=[10, 25], mem_s=5, wait_idle_s=60, retry_s=90)
    RETRY["budget_s"] = cfg["retry_s"]
    cfg.update(bin=ROOT / "target/release/examples", litellm=a.litellm,
               litellm_workers=a.litellm_workers, litellm_port=4417)
    work = ROOT / "target/bench/gateway"
    logdir = ROOT / "target/bench/logs"
    work.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)

    cpu_model = next((l.split(":", 1)[1].strip() for l in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if l.startswith("model name")), platform.processor())
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": NCPU, "cpu": cpu_model,
                    "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                     / 2**30, 1),
                    "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
                    "nice": os.nice(0)},
        "git": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=ROOT).stdout.strip(),
        "uncommitted": subprocess.run(["git", "status", "--short", "--", "crates"],
                                      capture_output=True, text=True,
                                      cwd=ROOT).stdout.split("\n")[:-1],
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True,
                              text=True).stdout.splitlines()[0],
        "quick": a.quick,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()},
        "throughput": {}, "ladder": {},
    }
    log(f"waiting for an idle machine (load {results['machine']['loadavg_at_start']})")
    results["machine"]["busy_share_before"] = round(wait_idle(cfg["wait_idle_s"]), 3)

    servers = []
    try:
        mock = Server("mock", [str(cfg["bin"] / "mock_upstream"), "127.0.0.1:0", str(a.threads)],
                      logdir, ready="line")
        servers.append(mock)
        gateways = [("auth", "auth", work), ("all", "all", work)]
        if a.shm:  # diagnosis: the same as `all`, with the spool's fsyncs made free
            gateways.append(("all-shm", "all", Path("/dev/shm")))
        for name, mode, where in gateways:
            spool = where / f"wattmesh-bench-spool-{name}"
            shutil.rmtree(spool, ignore_errors=True)
            servers.append(Server(f"gateway-{name}",
                                  [str(cfg["bin"] / "bench_gateway"), "--upstream", mock.url,
                                   "--mode", mode, "--spool", str(spool), "--threads",
                                   str(a.threads)], logdir, ready="line"))
        targets = {"direct": (mock.url, OUR_KEY)}
        for srv in servers[1:]:
            targets[srv.name.removeprefix("gateway-")] = (srv.url, OUR_KEY)
        if a.memory_only:
            memory_phase(mock, cfg, logdir, work, results, servers[2])
            print(json.dumps(results["memory"], indent=1))
            return
        for name, (url, key) in targets.items():
            smoke(name, url, key)
            wrk(url, key, stream=False, conns=32, seconds=2, threads=2)  # warm-up
        throughput_phase(targets, servers, cfg, results)
        ladder_phase(targets, servers, cfg, results)
        memory_phase(mock, cfg, logdir, work, results, servers[2])
        if a.profile:
            profile_phase(targets, servers, cfg, results)
        for name, _, where in gateways:
            # Bytes of records, not the segments' preallocated size.
            results.setdefault("spool_bytes", {})[name] = sum(
                p.stat().st_blocks * 512 for p in (where / f"wattmesh-bench-spool-{name}").glob("*"))
        if not a.no_litellm:
            for srv in servers[1:]:  # only the mock stays up beside LiteLLM
                srv.stop()
            litellm_phase(mock, cfg, logdir, work, results)
    finally:
        for srv in servers:
            srv.stop()
        for where in (Path("/dev/shm"), work):  # hundreds of MB of usage events
            for p in where.glob("wattmesh-bench-spool-*"):
                shutil.rmtree(p, ignore_errors=True)
    summarize(results)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    report(results)
    print(f"\nJSON: {Path(a.out).relative_to(ROOT) if Path(a.out).is_relative_to(ROOT) else a.out}")


if __name__ == "__main__":
    main()
