"""Money, end to end, with the official OpenAI SDK against `wattmesh up`: tenants created on
purpose, keys with limits (429 with OpenAI's headers), prepaid credit that runs out
(`insufficient_quota`), usage metered for every request (streamed without `include_usage`
too) and billed exactly as served, revocation in force within seconds."""

import json
import time
import uuid

import openai
import pytest

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
HELLO = [{"role": "user", "content": "Say hello."}]
RATE_HEADERS = [
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
]


def client(fleet, key) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=fleet.gateway_url, max_retries=0)


def tenant(fleet, *args) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    fleet.cli("tenants", "create", name, *args)
    return name


def new_key(fleet, tenant_name, *args) -> str:
    out = fleet.cli("keys", "create", "--tenant", tenant_name, *args).stdout
    return out.strip().splitlines()[-1]


def usage_rows(fleet, tenant_name, group_by=None) -> list:
    args = ["usage", "--tenant", tenant_name, "--json"]
    if group_by:
        args += ["--group-by", group_by]
    return json.loads(fleet.cli(*args).stdout)


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_key_for_an_unknown_tenant_is_refused(fleet):
    r = fleet.cli("keys", "create", "--tenant", "typo-tenant", check=False)
    assert r.returncode != 0
    assert "tenant" in r.stderr and "not" in r.stderr, r.stderr
    listed = json.loads(fleet.cli("tenants", "list", "--json").stdout)
    assert "typo-tenant" not in [t["name"] for t in listed]


def test_every_request_is_metered_and_billed_as_served(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name)
    c = client(fleet, key)
    served_prompt = served_completion = 0
    # Plain answers carry their usage.
    for _ in range(2):
        r = c.chat.completions.create(model=CHAT, messages=HELLO, temperature=0, max_tokens=6)
        served_prompt += r.usage.prompt_tokens
        served_completion += r.usage.completion_tokens
    # A stream whose client asked for usage gets it at the end, as OpenAI sends it.
    chunks = list(c.chat.completions.create(model=CHAT, messages=HELLO, temperature=0,
                                            max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    served_prompt += chunks[-1].usage.prompt_tokens
    served_completion += chunks[-1].usage.completion_tokens
    # A stream whose client did not ask carries no usage, and is billed all the same: the
    # same greedy request as the one above, so the same tokens again.
    plain = list(c.chat.completions.create(model=CHAT, messages=HELLO, temperature=0,
                                           max_tokens=6, stream=True))
    assert all(ch.usage is None for ch in plain)
    assert all(ch.choices for ch in plain), "the usage chunk was not stripped"
    assert [ch.choices[0].delta.content for ch in plain] == \
        [ch.choices[0].delta.content for ch in chunks[:-1]]
    served_prompt += chunks[-1].usage.prompt_tokens
    served_completion += chunks[-1].usage.completion_tokens
    e = c.embeddings.create(model=EMBED, input=["one", "two"])
    served_prompt += e.usage.prompt_tokens

    def billed():
        rows = usage_rows(fleet, name)
        return rows if rows and rows[0]["requests"] == 5 else None

    total = wait_for("usage of 5 requests to be billed", billed)[0]
    assert (total["prompt_tokens"], total["completion_tokens"]) == \
        (served_prompt, served_completion)
    by_model = {r["group"]: r for r in usage_rows(fleet, name, "model")}
    assert by_model[EMBED]["prompt_tokens"] == e.usage.prompt_tokens
    assert by_model[EMBED]["requests"] == 1
    assert float(total["cost"]) > 0


def test_rate_limits_answer_429_with_openai_headers(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name, "--rpm", "2")
    c = client(fleet, key)
    raw = c.chat.completions.with_raw_response.create(model=CHAT, messages=HELLO, max_tokens=1)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.headers["x-request-id"].startswith("req_")
    c.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=1)
    resp = err.value.response
    assert err.value.code == "rate_limit_exceeded"
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.headers["x-request-id"].startswith("req_")


def test_tenant_limits_change_within_seconds(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name)
    c = client(fleet, key)
    c.embeddings.create(model=EMBED, input="x")
    fleet.cli("tenants", "limits", name, "--rpm", "1", "--tpm", "100000")
    start = time.monotonic()

    def limited():
        try:
            raw = c.embeddings.with_raw_response.create(model=EMBED, input="x")
            return raw.headers.get("x-ratelimit-limit-requests") == "1" and raw.headers
        except openai.RateLimitError as e:
            return e.response.headers

    headers = wait_for("the new tenant limit", limited, timeout=5)
    assert time.monotonic() - start < 5
    for h in RATE_HEADERS:
        assert h in headers, f"{h} missing from {dict(headers)}"


def test_prepaid_credit_runs_out_with_insufficient_quota(fleet):
    name = tenant(fleet, "--plan", "prepaid")
    key = new_key(fleet, name)
    c = client(fleet, key)
    # No credit yet.
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=4)
    assert err.value.code == "insufficient_quota"
    # Enough for a few requests' worst case (prompt bound + 4 tokens at the demo price).
    fleet.cli("tenants", "top-up", name, "0.0004", "--reference", f"pay-{name}")
    again = fleet.cli("tenants", "top-up", name, "0.0004", "--reference", f"pay-{name}",
                      check=False)
    assert again.returncode != 0, "a repeated payment reference must not credit twice"
    served = 0
    for _ in range(200):
        try:
            c.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=4)
            served += 1
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota"
            break
    else:
        pytest.fail("credit never ran out")
    assert served >= 1

    def settled():
        shown = json.loads(fleet.cli("tenants", "show", name, "--json").stdout)
        rows = usage_rows(fleet, name)
        return rows and rows[0]["requests"] == served and shown

    shown = wait_for("the served requests to be billed", settled)
    balance = float(shown["tenant"]["balance"])
    assert balance >= 0, f"overspent: balance {balance}"
    kinds = [e["kind"] for e in shown["ledger"]]
    assert kinds[0] == "top_up" and "usage" in kinds


def test_a_revoked_key_stops_within_five_seconds_and_stays_listed(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name)
    c = client(fleet, key)
    c.embeddings.create(model=EMBED, input="x")
    keys = json.loads(fleet.cli("keys", "list", "--json").stdout)
    mine = next(k for k in keys if k["tenant"] == name)
    fleet.cli("keys", "revoke", mine["prefix"])
    start = time.monotonic()

    def refused():
        try:
            c.embeddings.create(model=EMBED, input="x")
            return False
        except openai.AuthenticationError:
            return True

    wait_for("the revoked key to be refused", refused, timeout=5)
    assert time.monotonic() - start < 5
    keys = json.loads(fleet.cli("keys", "list", "--json").stdout)
    mine = next(k for k in keys if k["id"] == mine["id"])
    assert mine["status"] == "revoked"
    assert mine["revoked_at"] and mine["revoked_by"].startswith("admin")
    assert mine["last_used_at"] is not None


def test_a_key_reaches_only_its_models(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name, "--model", EMBED)
    c = client(fleet, key)
    c.embeddings.create(model=EMBED, input="x")
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=1)
    assert err.value.code == "model_not_found"
