"""Our embedded engine side by side with llama.cpp on the same GGUF and thread count (issue 3).
Started by bench/engine, which builds everything and passes the paths.

`bench` (default) measures, interleaving the engines run by run so drift hits all alike:
- single-stream decode tokens/s: (completion tokens - 1) / (last - first token), prefill
  excluded; ours over HTTP (streaming /v1/completions), llama-cpp-python in-process, and
  llama-server (one stream);
- TTFT of a 512-token prompt: request start -> first generated text, a different 512 token ids
  each run so no engine can reuse a cached prefix;
- aggregate tokens/s at 1, 4 and 16 concurrent streams: sum of usage.completion_tokens over the
  wall time from the first request to the last reply; ours vs llama-server --parallel 16;
- peak RSS (VmHWM) of our server and llama-server.
Every prompt is sent as token ids from llama.cpp's tokenizer, so both engines see the same
input. Every measurement also records the share of the CPU that other processes took meanwhile
(this machine is shared); one above 10% is measured again (twice at most, and not after 8
minutes), and medians use the clean runs. Writes a JSON result (--out).

`reference` writes the greedy reference data the engine's tests compare with
(crates/engine/tests/data/llama_cpp_greedy.json) with llama-cpp-python.
"""

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

MODEL = "smollm2-135m-instruct"
CLEAN = 0.1  # a run is clean when other processes took at most this share of the CPU
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
LONG_TEXT = (
    "The grid operator publishes a day-ahead price for every hour, and the site controller reads "
    "it at noon. When the price rises above the break-even point of the miners, the controller "
    "curtails the oldest machines first, because they earn the least per megawatt-hour. The "
    "power that is freed goes to the GPU containers, which run inference for customers who pay "
    "per token. A demand-response event from the utility overrides everything: the site must "
    "drop to its committed floor within ten minutes, so the controller stops new requests, lets "
    "running streams finish, drains the replicas, and reports the new load. In the morning the "
    "operator reviews the night: how many tokens were served, how many hashes were found, what "
    "the energy cost, and whether the curtailment paid for itself. Sites in the north are cooled "
    "by outside air for most of the year; sites in the desert need evaporative cooling in summer, "
    "which costs water and power. The network spreads the load across regions so that no "
    "customer notices when one site goes dark for an hour. Each region keeps at least two "
    "replicas of every popular model, and the scheduler never places two replicas of the same "
    "deployment on one node. "
)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def cpu_busy(seconds=2.0):
    """Fraction of all cores busy over `seconds` (from /proc/stat), whoever uses them."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit_s, threshold=0.15):
    """Waits (up to limit_s) until the machine is nearly idle; returns the last busy fraction."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"waiting for an idle machine: {busy:.0%} of the CPU busy", file=sys.stderr)
        busy = cpu_busy(5)
    if busy > threshold:
        print(f"warning: {busy:.0%} of the CPU busy with other work; numbers will be noisy",
              file=sys.stderr)
    return busy


CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_cpu_s():
    """(busy, stolen) CPU seconds of the whole machine so far; stolen: by the hypervisor."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v[:7]) - v[3] - v[4]) / CLK_TCK, v[7] / CLK_TCK


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class OtherWork:
    """CPU seconds that processes other than ours (the servers and this one) used meanwhile."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = busy_cpu_s()
        self.ours0 = sum(proc_cpu_s(p) for p in self.pids)
        return self

    def __exit__(self, *exc):
        capacity = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        busy, steal = busy_cpu_s()
        other = busy - self.busy0 - (sum(proc_cpu_s(p) for p in self.pids) - self.ours0)
        self.share = max(0.0, other) / capacity  # of all cores
        self.steal = (steal - self.steal0) / capacity
        return False


RETRY_UNTIL = time.monotonic() + 480  # no re-measuring after this, so that a run stays bounded


def measured(pids, what, fn, retries=2, limit=CLEAN):
    """Runs fn; again (up to `retries` times) while other work took > limit of the CPU."""
    if time.monotonic() > RETRY_UNTIL:
        retries = 0
    for attempt in range(retries + 1):
        with OtherWork(pids) as ow:
            res = fn()
        res["other_cpu_share"] = ow.share
        res["steal_share"] = ow.steal
        if ow.share <= limit:
            return res
        print(f"{what}: other processes took {ow.share:.0%} of the CPU"
              + ("; measuring again" if attempt < retries else "; keeping it"), file=sys.stderr)
        time.sleep(5)
    return res


def git_state():
    """The commit, and how many files under crates/engine/src differ from it."""
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "crates/engine/src"],
                                        text=True).splitlines()
        return {"commit": head, "engine_files_changed": len(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_llama(gguf, threads, n_ctx):
    from llama_cpp import Llama
    return Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                 n_batch=512, seed=1234, verbose=False)


def eog_ids(llm):
    """Every end-of-generation id of the vocabulary, as llama.cpp decides (<|im_end|> = 2, ...)."""
    import llama_cpp
    vocab = llm._model.vocab
    return {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def tokenize(llm, text):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def greedy(llm, ids, max_tokens, stop):
    """Greedy decode with llama-cpp-python; yields each generated id with its arrival time."""
    llm.reset()  # no prefix reuse from a previous call: every call prefills its whole prompt
    n = 0
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                            reset=True):
        if tok in stop:
            return
        yield tok, time.perf_counter()
        n += 1
        if n >= max_tokens:
            return


# ---------------------------------------------------------------------------------------------
# reference data


def reference_cases():
    completions = [
        ("short", "The capital of France is"),
        ("story", STORY),
        ("long", "Read the notes and answer.\n\n" + LONG_TEXT + "\n\nQuestion: What happens "
                 "during a demand-response event, and why?\nAnswer: During a demand-response "
                 "event, the site"),
        ("digits", "Compute: 1234 + 5678 = 6912. 98765 - 4321 = 94444. 12 * 12 ="),
        ("unicode", "Translations: café → coffee, 日本 → Japan, 🔋⚡ → battery power, "
                    "naïve façade → "),
        ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ]
    chats = [
        ("chat_default_system", [{"role": "user", "content": "What is the capital of Germany?"}]),
        ("chat_system", [{"role": "system", "content": "You are a concise assistant."},
                         {"role": "user", "content": "List three primary colors."}]),
        ("chat_multi_turn", [{"role": "user", "content": "Hi! My name is Ada."},
                             {"role": "assistant", "content": "Hello Ada! How can I help you?"},
                             {"role": "user", "content": "Write a haiku about power grids."}]),
    ]
    return completions, chats


def render_chat(template, messages, bos, eos):
    """Renders the GGUF's chat template as transformers does (sandboxed, trim/lstrip blocks)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos, eos_token=eos)


def cmd_reference(a):
    import llama_cpp
    import numpy as np
    n_ctx, max_tokens = 2048, 48
    llm = load_llama(a.gguf, a.threads, n_ctx)
    meta = llm.metadata
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
    if add_bos:
        sys.exit("the GGUF asks for a BOS token: the reference's prompts assume it does not")
    template = meta["tokenizer.chat_template"]
    piece = lambda t: llm.detokenize([t], special=True).decode("utf-8")  # noqa: E731
    bos, eos = piece(llm.token_bos()), piece(llm.token_eos())
    stop = eog_ids(llm)
    completions, chats = reference_cases()
    cases = [{"name": n, "kind": "completion", "prompt": p} for n, p in completions]
    cases += [{"name": n, "kind": "chat", "messages": m,
               "prompt": render_chat(template, m, bos, eos)} for n, m in chats]
    for case in cases:
        ids = tokenize(llm, case["prompt"])
        out, margins, finish = [], [], "length"
        llm.reset()
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                repeat_penalty=1.0, reset=True):
            # the logits this token was picked from: how close was the runner-up?
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            top2 = np.argsort(logits)[-2:]
            if int(top2[1]) != tok:
                sys.exit(f"{case['name']}: greedy picked {tok}, argmax is {int(top2[1])}")
            margins.append(round(float(logits[top2[1]] - logits[top2[0]]), 4))
            if tok in stop:
                finish = "stop"
                break
            out.append(tok)
            if len(out) >= max_tokens:
                break
        case["prompt_ids"] = ids
        case["output_ids"] = out
        case["logit_margins"] = margins
        case["finish_reason"] = finish
        case["output_text"] = llm.detokenize(out).decode("utf-8", errors="replace")
        print(f"{case['name']:>20}: {len(ids):3} prompt tokens, {len(out):2} generated "
              f"({finish}): {case['output_text'][:60]!r}", file=sys.stderr)
    doc = {
        "about": "Greedy outputs of llama.cpp (llama-cpp-python) on the chat model's GGUF, the "
                 "reference for our engine's token-for-token test. Made by `bench/engine "
                 "reference`. prompt_ids: llama.cpp's tokenization of prompt (no BOS added, "
                 "special tokens parsed). output_ids: generated ids, the stop token excluded; "
                 "finish_reason 'stop' means the next token was an end-of-generation id "
                 "(eog_ids), 'length' that max_tokens were generated. logit_margins[i]: top-1 "
                 "minus top-2 logit at step i (one more entry than output_ids when the last "
                 "step picked the stop token), so a test can tell a near tie, where float "
                 "rounding may flip the pick, from a real divergence. Chat prompts are the "
                 "GGUF's tokenizer.chat_template rendered with jinja2 (trim_blocks, "
                 "lstrip_blocks, add_generation_prompt=True).",
        "model": MODEL,
        "model_file": os.path.basename(a.gguf),
        "model_sha256": sha256(a.gguf),
        "llama_cpp_python": llama_cpp.__version__,
        "n_ctx": n_ctx,
        "n_batch": 512,
        "n_threads": a.threads,
        "sampling": {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "repeat_penalty": 1.0},
        "max_tokens": max_tokens,
        "add_bos": add_bos,
        "eog_ids": sorted(stop),
        "chat_template": template,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    # one line per id list (a raw newline never occurs inside a JSON string)
    text = re.sub(r"\[\n[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {a.out} ({len(cases)} cases)", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, argv, env=None, log=None):
        self.name = name
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, **(env or {})})
        self.url = None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_peak_mib(self):
        kib = vm_hwm_kib(self.proc.pid)
        return kib / 1024 if kib else None


def start_ours(a):
    srv = Server("ours", [a.ours, "--model-dir", a.model_dir, "--kind", "chat", "--name", MODEL,
                          "--listen", "127.0.0.1:0"],
                 env={"WATTMESH_THREADS": str(a.threads), "RAYON_NUM_THREADS": str(a.threads)},
                 log=os.path.join(a.log_dir, "ours.log"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = srv.proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening "):
            srv.url = line.split()[1]
            return srv
    srv.stop()
    sys.exit(f"our server did not start; see {a.log_dir}/ours.log")


def start_llama_server(a):
    import httpx
    port = free_port()
    srv = Server("llama-server", [
        a.llama_server, "-m", a.gguf, "--host", "127.0.0.1", "--port", str(port),
        "-t", str(a.threads), "-tb", str(a.threads), "--parallel", str(a.parallel),
        "-c", str(a.parallel * a.ctx_per_slot), "-cb", "-b", "512", "--no-webui",
        "--alias", MODEL], log=os.path.join(a.log_dir, "llama-server.log"))
    srv.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            break
        try:
            if httpx.get(srv.url + "/health", timeout=2).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    srv.stop()
    sys.exit(f"llama-server did not start; see {a.log_dir}/llama-server.log")


async def stream_completion(client, srv, ids, max_tokens):
    """One streaming /v1/completions; returns timings and usage."""
    body = {"model": MODEL, "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if srv.name == "llama-server":
        body["cache_prompt"] = False  # every request prefills its whole prompt, as ours does
    start = time.perf_counter()
    first = last = None
    usage = None
    async with client.stream("POST", srv.url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{srv.name}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError(f"{srv.name}: no usage in the stream")
    first = first or end
    last = last or end
    tokens = usage["completion_tokens"]
    return {"start": start, "end": end, "ttft_ms": (first - start) * 1e3,
            "decode_tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0,
            "tokens": tokens, "prompt_tokens": usage["prompt_tokens"]}


def client():
    import httpx
    return httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10),
                             limits=httpx.Limits(max_connections=64))


async def one_http(srv, ids, max_tokens):
    async with client() as c:
        return await stream_completion(c, srv, ids, max_tokens)


async def concurrent_http(srv, prompts, max_tokens):
    async with client() as c:
        results = await asyncio.gather(*(stream_completion(c, srv, p, max_tokens)
                                         for p in prompts))
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"streams": len(prompts), "tokens": tokens, "wall_s": end - start,
            "aggregate_tok_s": tokens / (end - start),
            "mean_ttft_ms": statistics.mean(r["ttft_ms"] for r in results)}


def one_inproc(llm, ids, max_tokens):
    stop = eog_ids(llm)
    start = time.perf_counter()
    times = [t for _, t in greedy(llm, ids, max_tokens, stop)]
    end = time.perf_counter()
    if not times:
        return {"ttft_ms": (end - start) * 1e3, "decode_tok_s": 0.0, "tokens": 0,
                "prompt_tokens": len(ids)}
    n = len(times)
    return {"ttft_ms": (times[0] - start) * 1e3,
            "decode_tok_s": (n - 1) / (times[-1] - times[0]) if n > 1 else 0.0,
            "tokens": n, "prompt_tokens": len(ids)}


def median_of(runs, key):
    """Median over the clean runs, or over all of them when none was clean."""
    clean = [r for r in runs if r.get("other_cpu_share", 0.0) <= CLEAN] or runs
    return statistics.median(r[key] for r in clean)


def clean_runs(runs):
    return sum(r.get("other_cpu_share", 0.0) <= CLEAN for r in runs)


def ratio(x, y):
    return x / y if x and y else None


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def cmd_bench(a):
    import llama_cpp
    os.makedirs(a.log_dir, exist_ok=True)
    began = time.monotonic()
    llm = load_llama(a.gguf, a.threads, 2048)
    ours = start_ours(a)
    lsrv = start_llama_server(a)
    servers = [ours, lsrv]
    busy = {}
    try:
        busy["before"] = wait_idle(a.wait_idle)
        story = tokenize(llm, STORY)
        # TTFT prompts: exactly 512 ids, starting somewhere different every run.
        long_ids = tokenize(llm, LONG_TEXT * 8)
        ttft_prompts = [long_ids[7 * r: 7 * r + 512] for r in range(a.runs)]
        assert all(len(p) == 512 for p in ttft_prompts)
        topics = ["a lighthouse", "a wind farm", "a robot", "a dragon", "a baker", "a river",
                  "a mountain", "a ship", "a library", "a garden", "a train", "a comet",
                  "a violin", "a desert", "a city", "a forest"]
        stream_prompts = [tokenize(llm, f"Chapter {i + 1}. Once upon a time there was {t}, and")
                          for i, t in enumerate(topics * (max(a.streams) // len(topics) + 1))]

        # warm up every engine once
        for srv in servers:
            asyncio.run(one_http(srv, story, 8))
        one_inproc(llm, story, 8)

        single = {"ours": [], "llama-cpp-python": [], "llama-server": []}
        ttft = {"ours": [], "llama-cpp-python": [], "llama-server": []}
        pids = [os.getpid(), ours.proc.pid, lsrv.proc.pid]
        engines = {
            "ours": lambda ids, n: asyncio.run(one_http(ours, ids, n)),
            "llama-cpp-python": lambda ids, n: one_inproc(llm, ids, n),
            "llama-server": lambda ids, n: asyncio.run(one_http(lsrv, ids, n)),
        }
        for r in range(a.runs):
            for name, run in engines.items():
                single[name].append(measured(pids, f"single stream {name}",
                                             lambda: run(story, a.max_tokens)))
            print(f"single stream run {r + 1}/{a.runs}: " + ", ".join(
                f"{k} {v[-1]['decode_tok_s']:.1f} tok/s ({v[-1]['tokens']} tok)"
                for k, v in single.items()), file=sys.stderr)
        for r, ids in enumerate(ttft_prompts):
            for name, run in engines.items():
                ttft[name].append(measured(pids, f"TTFT {name}", lambda: run(ids, 4)))
            print(f"TTFT 512 run {r + 1}/{a.runs}: " + ", ".join(
                f"{k} {v[-1]['ttft_ms']:.0f} ms ({v[-1]['prompt_tokens']} prompt tok)"
                for k, v in ttft.items()), file=sys.stderr)
        for k, v in ttft.items():
            if any(x["prompt_tokens"] != 512 for x in v):
                print(f"warning: {k} counted {[x['prompt_tokens'] for x in v]} prompt tokens",
                      file=sys.stderr)

        busy["after_single_and_ttft"] = wait_idle(a.wait_idle)
        concurrent = {"ours": {}, "llama-server": {}}
        for n in a.streams:
            for name, srv in (("ours", ours), ("llama-server", lsrv)):
                res = measured(pids, f"{n} streams {name}", lambda: asyncio.run(
                    concurrent_http(srv, stream_prompts[:n], a.max_tokens)))
                concurrent[name][str(n)] = res
                print(f"{n:2} streams {name}: {res['aggregate_tok_s']:.1f} tok/s aggregate "
                      f"({res['tokens']} tok in {res['wall_s']:.1f} s)", file=sys.stderr)

        rss = {"ours": ours.rss_peak_mib(), "llama-server": lsrv.rss_peak_mib(),
               "llama-cpp-python (bench process)": vm_hwm_kib(os.getpid()) / 1024}
    finally:
        for srv in servers:
            srv.stop()

    med_single = {k: {"decode_tok_s": median_of(v, "decode_tok_s"),
                      "tokens": median_of(v, "tokens"), "clean_runs": clean_runs(v)}
                  for k, v in single.items()}
    med_ttft = {k: {"ttft_ms": median_of(v, "ttft_ms"), "prompt_tokens": v[0]["prompt_tokens"],
                    "clean_runs": clean_runs(v)} for k, v in ttft.items()}
    o_dec = med_single["ours"]["decode_tok_s"]
    o_ttft = med_ttft["ours"]["ttft_ms"]
    ratios = {
        "decode_vs_llama_cpp_python": ratio(o_dec, med_single["llama-cpp-python"]["decode_tok_s"]),
        "decode_vs_llama_server": ratio(o_dec, med_single["llama-server"]["decode_tok_s"]),
        # TTFT as speed: llama.cpp's time / ours, so > 1 means we are faster
        "ttft_speed_vs_llama_cpp_python": ratio(med_ttft["llama-cpp-python"]["ttft_ms"], o_ttft),
        "ttft_speed_vs_llama_server": ratio(med_ttft["llama-server"]["ttft_ms"], o_ttft),
        **{f"aggregate_{n}_vs_llama_server": ratio(
            concurrent["ours"][str(n)]["aggregate_tok_s"],
            concurrent["llama-server"][str(n)]["aggregate_tok_s"]) for n in a.streams},
        "peak_rss_vs_llama_server": ratio(rss["ours"], rss["llama-server"]),
    }
    shares = [x["other_cpu_share"] for v in (*single.values(), *ttft.values()) for x in v]
    shares += [x["other_cpu_share"] for v in concurrent.values() for x in v.values()]
    busy["max_during_a_measurement"] = max(shares)
    steals = [x["steal_share"] for v in (*single.values(), *ttft.values()) for x in v]
    steals += [x["steal_share"] for v in concurrent.values() for x in v.values()]
    busy["max_steal_during_a_measurement"] = max(steals)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "other_cpu_busy_before_phases": busy},
        "git": git_state(),
        "model": MODEL, "gguf": os.path.basename(a.gguf), "gguf_sha256": sha256(a.gguf),
        "threads": a.threads, "max_tokens": a.max_tokens, "runs": a.runs,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_server": {"parallel": a.parallel, "ctx_per_slot": a.ctx_per_slot,
                         "cont_batching": True, "cache_prompt": False},
        "single_stream": med_single, "ttft_512": med_ttft,
        "concurrent": concurrent, "peak_rss_mib": rss, "ratios_ours_over_llama_cpp": ratios,
        "raw": {"single_stream": single, "ttft_512": ttft},
        "elapsed_s": time.monotonic() - began,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print()
    print(f"{MODEL} ({os.path.basename(a.gguf)}), {a.threads} threads, max_tokens "
          f"{a.max_tokens}, medians of {a.runs}; other work busy before: "
          + ", ".join(f"{k} {v:.0%}" for k, v in busy.items()))
    print("| measure | ours | llama-cpp-python | llama-server | ours / llama-cpp-python "
          "| ours / llama-server |")
    print("|---|---|---|---|---|---|")
    s, t, c, r = med_single, med_ttft, concurrent, ratios
    print(f"| single-stream decode (tok/s) | {fmt(o_dec)} | "
          f"{fmt(s['llama-cpp-python']['decode_tok_s'])} | "
          f"{fmt(s['llama-server']['decode_tok_s'])} | "
          f"{fmt(r['decode_vs_llama_cpp_python'], '.2f')}x | "
          f"{fmt(r['decode_vs_llama_server'], '.2f')}x |")
    print(f"| TTFT, 512-token prompt (ms) | {fmt(o_ttft, '.0f')} | "
          f"{fmt(t['llama-cpp-python']['ttft_ms'], '.0f')} | "
          f"{fmt(t['llama-server']['ttft_ms'], '.0f')} | "
          f"{fmt(r['ttft_speed_vs_llama_cpp_python'], '.2f')}x | "
          f"{fmt(r['ttft_speed_vs_llama_server'], '.2f')}x |")
    for n in a.streams:
        print(f"| aggregate, {n} stream{'s' if n > 1 else ''} (tok/s) | "
              f"{fmt(c['ours'][str(n)]['aggregate_tok_s'])} | | "
              f"{fmt(c['llama-server'][str(n)]['aggregate_tok_s'])} | | "
              f"{fmt(r[f'aggregate_{n}_vs_llama_server'], '.2f')}x |")
    print(f"| peak RSS (MiB) | {fmt(rss['ours'], '.0f')} | | {fmt(rss['llama-server'], '.0f')} "
          f"| | {fmt(r['peak_rss_vs_llama_server'], '.2f')}x |")
    dirty = [f"{what} {k} ({m['clean_runs']}/{a.runs} clean)"
             for what, med in (("single stream", s), ("TTFT", t))
             for k, m in med.items() if m["clean_runs"] < a.runs]
    dirty += [f"{n} streams {k}" for k, v in c.items() for n, x in v.items()
              if x["other_cpu_share"] > CLEAN]
    if dirty:
        print("other processes took over {:.0%} of the CPU during: {}; medians use the clean "
              "runs where there are any".format(CLEAN, ", ".join(dirty)))
    print("(ratios are ours / theirs; for TTFT their time / ours: above 1 means ours is better, "
          "except RSS, where below 1 is better)")
    print(f"\nwrote {a.out} in {result['elapsed_s']:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", choices=["bench", "reference"], default="bench")
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--model-dir", help="our model directory (holds the GGUF)")
    ap.add_argument("--ours", help="our example server binary (examples/serve)")
    ap.add_argument("--llama-server")
    ap.add_argument("--log-dir", default="target/bench/logs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wait-idle", type=float, default=120,
                    help="seconds to wait for other work to leave the CPU before measuring")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 4, 16])
    ap.add_argument("--parallel", type=int, default=16, help="llama-server slots")
    ap.add_argument("--ctx-per-slot", type=int, default=1024)
    a = ap.parse_args()
    if a.mode == "reference":
        a.out = a.out or "crates/engine/tests/data/llama_cpp_greedy.json"
        cmd_reference(a)
    else:
        if not (a.model_dir and a.ours and a.llama_server):
            ap.error("bench needs --model-dir, --ours and --llama-server")
        a.out = a.out or "target/bench/engine.json"
        cmd_bench(a)


if __name__ == "__main__":
    main()
