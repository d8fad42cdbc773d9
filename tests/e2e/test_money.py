"""Money, end to end, with the official OpenAI SDK against `wattmesh up`: tenants created on
purpose, keys with limits (429 with OpenAI's headers), prepaid credit that runs out
(`insufficient_quota`), usage metered for every request (streamed without `include_usage`
too) and billed exactly as served, revocation in force within seconds."""

import json
import time
import uuid

import httpx
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


def test_a_stream_cut_by_its_client_is_billed_its_prompt_and_what_it_was_sent(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name)
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    full = list(client(fleet, key).chat.completions.create(
        model=CHAT, messages=story, temperature=0, max_tokens=64, stream=True,
        stream_options={"include_usage": True}))
    prompt = full[-1].usage.prompt_tokens
    assert prompt > 0
    # The same request, read for three content chunks and then hung up on.
    body = {"model": CHAT, "messages": story, "temperature": 0, "max_tokens": 64,
            "stream": True}
    read = 0
    with httpx.stream("POST", f"{fleet.gateway_url}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60) as r:
        assert r.status_code == 200
        assert "x-wattmesh-prompt-tokens" not in r.headers, "an internal header leaked"
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                read += 1
            if read == 3:
                break
    assert read == 3

    def billed():
        rows = usage_rows(fleet, name)
        return rows if rows and rows[0]["requests"] == 2 else None

    total = wait_for("the cut stream to be billed", billed)[0]
    # Its prompt was read in full: billed as the whole request's was.
    assert total["prompt_tokens"] == 2 * prompt, total
    cut_completion = total["completion_tokens"] - full[-1].usage.completion_tokens
    assert 3 <= cut_completion < full[-1].usage.completion_tokens, total


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


def test_customers_read_their_own_usage_and_costs_through_the_gateway(fleet):
    mine, theirs = tenant(fleet), tenant(fleet)
    key, other = new_key(fleet, mine), new_key(fleet, theirs)
    r = client(fleet, key).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=3)
    e = client(fleet, key).embeddings.create(model=EMBED, input="counted apart")
    client(fleet, other).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=3)
    wait_for("usage to be billed", lambda: (usage_rows(fleet, mine) or [{}])[0].get("requests") == 2)

    def get(path, **params):
        resp = httpx.get(f"{fleet.gateway_url}/organization/{path}", params=params,
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-request-id"].startswith("req_")
        page = resp.json()
        assert page["object"] == "page"
        return [x for b in page["data"] for x in b["results"]]

    start = int(time.time()) - 3600
    completions = get("usage/completions", start_time=start, bucket_width="1h",
                      group_by=["model", "api_key_id"])
    assert len(completions) == 1, completions
    assert completions[0]["model"] == CHAT
    assert completions[0]["input_tokens"] == r.usage.prompt_tokens
    assert completions[0]["output_tokens"] == r.usage.completion_tokens
    assert completions[0]["num_model_requests"] == 1
    embeddings = get("usage/embeddings", start_time=start, bucket_width="1h")
    assert [x["input_tokens"] for x in embeddings] == [e.usage.prompt_tokens]
    costs = get("costs", start_time=start, group_by="line_item")
    assert {c["line_item"] for c in costs} == {CHAT, EMBED}
    assert all(c["amount"]["currency"] == "usd" and c["amount"]["value"] > 0 for c in costs)
    # Parameters we do not have are refused, not ignored.
    resp = httpx.get(f"{fleet.gateway_url}/organization/costs",
                     params={"start_time": start, "project_ids": "p"},
                     headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_gateway_metrics_count_requests_tokens_rejections_and_the_spool(fleet):
    name = tenant(fleet)
    key = new_key(fleet, name, "--rpm", "1")
    c = client(fleet, key)
    r = c.embeddings.create(model=EMBED, input="measured")
    with pytest.raises(openai.RateLimitError):
        c.embeddings.create(model=EMBED, input="refused")
    text = httpx.get(fleet.metrics_url, timeout=10).text

    def sample(metric, **labels):
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        pytest.fail(f"no {metric} {labels} in:\n{text}")

    assert sample("wattmesh_gateway_requests_total", tenant=name, model=EMBED, status=200) == 1
    assert sample("wattmesh_gateway_requests_total", tenant=name, model=EMBED, status=429) == 1
    assert sample("wattmesh_gateway_tokens_total", tenant=name, direction="prompt") == \
        r.usage.prompt_tokens
    assert sample("wattmesh_gateway_rejections_total", reason="rate_limit") >= 1
    for metric in ["wattmesh_gateway_request_duration_seconds_bucket",
                   "wattmesh_gateway_overhead_seconds_bucket", "wattmesh_gateway_ttft_seconds_bucket",
                   "wattmesh_gateway_spool_depth", "wattmesh_gateway_shipping_lag_seconds"]:
        assert metric in text, metric
    # The customers' port does not serve them: tenant names are in the labels.
    assert httpx.get(f"{fleet.gateway_url}/../metrics".replace("/v1/..", ""),
                     headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 404
