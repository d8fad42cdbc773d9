"""Time to first token and decode tokens/s of one stream, through the gateway and directly on
a replica, side by side in one run. Started by bench/single-stream (which runs `wattmesh up`).

Decode tokens/s counts the tokens after the first over the time between the first and the
last content chunk, so it excludes prefill; TTFT is request start to first content chunk.
"""

import argparse
import json
import statistics
import subprocess
import time

import httpx

PROMPT = [{"role": "user", "content": "Write a long story about a wind farm that powers a town."}]


def one_stream(url, headers, model, max_tokens):
    body = {"model": model, "messages": PROMPT, "temperature": 0, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    usage = None
    with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    tokens = usage["completion_tokens"]
    return {"ttft_ms": (first - start) * 1000,
            "decode_tok_s": (tokens - 1) / (last - first) if tokens > 1 else 0.0,
            "tokens": tokens, "prompt_tokens": usage["prompt_tokens"]}


def summarize(runs):
    return {k: statistics.median(r[k] for r in runs) for k in ("ttft_ms", "decode_tok_s", "tokens")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--wattmesh", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--control-url", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()

    status = json.loads(subprocess.check_output(
        [a.wattmesh, "status", "--json", "--data-dir", a.data_dir, "--control-url", a.control_url]))
    replica = next(r for r in status["replicas"]
                   if r["deployment"] == a.model and r["state"] == "ready")
    targets = {
        "gateway": (a.gateway + "/chat/completions", {"Authorization": f"Bearer {a.key}"}),
        "replica": (replica["endpoint"] + "/v1/chat/completions", {}),
    }
    for url, headers in targets.values():  # warm both paths once
        one_stream(url, headers, a.model, 8)
    results = {name: [] for name in targets}
    for _ in range(a.runs):  # interleave so drift hits both alike
        for name, (url, headers) in targets.items():
            results[name].append(one_stream(url, headers, a.model, a.max_tokens))
    table = {name: summarize(runs) for name, runs in results.items()}
    print(json.dumps({"model": a.model, "runs": a.runs, "max_tokens": a.max_tokens,
                      "prompt_tokens": results["gateway"][0]["prompt_tokens"], **table}, indent=2))
    g, r = table["gateway"], table["replica"]
    print(f"gateway/replica: TTFT {g['ttft_ms'] / r['ttft_ms']:.2f}x, "
          f"decode {g['decode_tok_s'] / r['decode_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
