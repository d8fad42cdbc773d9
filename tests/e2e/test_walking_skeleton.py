"""The walking skeleton, end to end: `wattmesh up`, the official OpenAI SDK, a site agent
running as its own process that is SIGKILLed, and a restart that keeps the state.

Tests run in file order; the last ones change the fleet (an extra site, a restart)."""

import json
import math
import signal
import time

import httpx
import openai
import pytest

from conftest import Proc, binary, models_dir

GERMANY = [{"role": "user", "content": "What is the capital of Germany?"}]
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


def client(fleet, key=None) -> openai.OpenAI:
    return openai.OpenAI(api_key=key or fleet.key, base_url=fleet.gateway_url, max_retries=0)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_chat_answers_berlin_at_temperature_zero(fleet):
    r = client(fleet).chat.completions.create(model=CHAT, messages=GERMANY, temperature=0)
    assert "Berlin" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_arrives_in_chunks_and_ends_with_usage(fleet):
    whole = client(fleet).chat.completions.create(model=CHAT, messages=GERMANY, temperature=0)
    chunks = list(client(fleet).chat.completions.create(
        model=CHAT, messages=GERMANY, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1, "one chunk is not a stream"
    assert "".join(texts) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_service_tiers_are_scheduling_classes(fleet):
    # The gateway maps OpenAI's service_tier onto the replica's priority classes.
    for tier in ["priority", "flex", "auto", "default"]:
        r = client(fleet).chat.completions.create(model=CHAT, messages=GERMANY, temperature=0,
                                                  max_tokens=4, service_tier=tier)
        assert r.choices[0].message.content


def test_text_completion(fleet):
    r = client(fleet).completions.create(model=CHAT, prompt="The capital of Germany is",
                                         max_tokens=5, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens <= 5


def test_embeddings_separate_paraphrases_from_unrelated(fleet):
    # The SDK asks for base64 by default; the gateway and replica must honour it.
    r = client(fleet).embeddings.create(model=EMBED, input=[
        "The cat sits on the mat.", "A cat is sitting on a mat.",
        "Quarterly revenue rose by eight percent."])
    a, b, c = (d.embedding for d in r.data)
    assert len(a) == 384
    assert cosine(a, b) > 0.6
    assert cosine(a, c) < 0.3
    assert r.usage.prompt_tokens > 0
    floats = client(fleet).embeddings.create(model=EMBED, input="The cat sits on the mat.",
                                             encoding_format="float")
    assert cosine(floats.data[0].embedding, a) > 0.9999


def test_models_are_listed(fleet):
    ids = {m.id for m in client(fleet).models.list()}
    assert {CHAT, EMBED} <= ids


def test_bad_key_gets_401_in_openai_shape(fleet):
    with pytest.raises(openai.AuthenticationError) as err:
        client(fleet, key="sk-wm-not-a-key").chat.completions.create(model=CHAT, messages=GERMANY)
    assert err.value.status_code == 401
    body = err.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"


LONG_PROMPT = "word " * 20000
BAD_INPUTS = [
    # (name, path, headers (None = valid key), body, expected status)
    ("malformed json", "/chat/completions", None, b"{not json", 400),
    ("body is an array", "/chat/completions", None, b"[]", 400),
    ("model not a string", "/chat/completions", None, {"model": 7, "messages": []}, 400),
    ("messages wrong type", "/chat/completions", None, {"model": CHAT, "messages": "hi"}, 400),
    ("empty messages", "/chat/completions", None, {"model": CHAT, "messages": []}, 400),
    ("unknown role", "/chat/completions", None,
     {"model": CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("huge max_tokens", "/chat/completions", None,
     {"model": CHAT, "messages": GERMANY, "max_tokens": 1_000_000_000}, 400),
    ("prompt longer than the context", "/chat/completions", None,
     {"model": CHAT, "messages": [{"role": "user", "content": LONG_PROMPT}]}, 400),
    ("temperature wrong type", "/chat/completions", None,
     {"model": CHAT, "messages": GERMANY, "temperature": "hot"}, 400),
    ("unknown service_tier", "/chat/completions", None,
     {"model": CHAT, "messages": GERMANY, "service_tier": "turbo"}, 400),
    ("unknown model", "/chat/completions", None, {"model": "gpt-9", "messages": GERMANY}, 404),
    ("embeddings on a chat model", "/embeddings", None, {"model": CHAT, "input": "x"}, 400),
    ("empty embedding input", "/embeddings", None, {"model": EMBED, "input": ""}, 400),
    ("oversize body", "/chat/completions", None,
     {"model": CHAT, "messages": [{"role": "user", "content": "x" * (9 << 20)}]}, 413),
    ("no authorization", "/chat/completions", {}, {"model": CHAT, "messages": GERMANY}, 401),
    ("basic authorization", "/chat/completions", {"Authorization": "Basic dXNlcjpwYXNz"},
     {"model": CHAT, "messages": GERMANY}, 401),
    ("bearer without token", "/chat/completions", {"Authorization": "Bearer"},
     {"model": CHAT, "messages": GERMANY}, 401),
]


@pytest.mark.parametrize("name,path,headers,body,status", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_in_openai_shape(fleet, name, path, headers, body, status):
    if headers is None:
        headers = {"Authorization": f"Bearer {fleet.key}"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(fleet.gateway_url + path, content=content, timeout=60,
                   headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and "param" in err and "code" in err


def test_keys_create_prints_a_working_key_last(fleet):
    fleet.cli("tenants", "create", "acme")
    out = fleet.cli("keys", "create", "--tenant", "acme").stdout
    key = out.strip().splitlines()[-1]
    r = client(fleet, key=key).chat.completions.create(model=CHAT, messages=GERMANY,
                                                       temperature=0, max_tokens=4)
    assert r.usage.completion_tokens <= 4


def wait_until(what, check, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def status(fleet) -> dict:
    return json.loads(fleet.cli("status", "--json").stdout)


def test_killed_site_leaves_requests_served_elsewhere(fleet):
    site = Proc([binary(), "agent", "--control-url", fleet.control_url, "--site", "muscat-1",
                 "--region", "middle-east", "--power-price", "29.0",
                 "--data-dir", str(fleet.data_dir), "--models-dir", models_dir()],
                fleet.log_dir / "agent-muscat-1.log")
    try:
        wait_until("the new site to heartbeat", lambda: any(
            s["name"] == "muscat-1" and s["ready"] for s in status(fleet)["sites"]))
        for deployment in (CHAT, EMBED):
            fleet.cli("deployments", "scale", deployment, "--replicas", "4")

        def extra_site_serves_both():
            ready = {r["deployment"] for r in status(fleet)["replicas"]
                     if r["site"] == "muscat-1" and r["state"] == "ready"}
            return ready == {CHAT, EMBED}
        wait_until("replicas of both models on the new site", extra_site_serves_both, timeout=180)
    finally:
        site.stop(sig=signal.SIGKILL)

    # Right after the kill the gateway still lists the dead replicas: retries must hide them.
    c = client(fleet)
    for _ in range(6):
        r = c.chat.completions.create(model=CHAT, messages=GERMANY, temperature=0, max_tokens=8)
        assert r.choices[0].message.content
        e = c.embeddings.create(model=EMBED, input="still here")
        assert len(e.data[0].embedding) == 384

    wait_until("the killed site to show as not ready", lambda: any(
        s["name"] == "muscat-1" and not s["ready"] for s in status(fleet)["sites"]), timeout=60)
    table = fleet.cli("status").stdout
    row = next(line for line in table.splitlines() if line.strip().startswith("muscat-1"))
    assert "NotReady" in row


def test_restart_keeps_state(fleet):
    assert fleet.up.stop(signal.SIGINT) == 0, "Ctrl-C must shut down cleanly"
    fleet.start()
    fleet.up.wait_for(r"demo API key .* was shown on first start")
    # The key from the first start is still accepted: keys live in the store, hashed.
    r = client(fleet).chat.completions.create(model=CHAT, messages=GERMANY, temperature=0)
    assert "Berlin" in r.choices[0].message.content
    deployments = {d["name"]: d["replicas"] for d in status(fleet)["deployments"]}
    assert deployments[CHAT] == 4, "the scale-up survives the restart"
