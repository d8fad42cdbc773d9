"""Billed tokens equal served tokens, whatever crashes: the control plane, one site agent and
two gateways run as processes of their own; clients load both gateways with the official SDK
while one gateway is SIGKILLed and restarted on its spool and the control plane is SIGKILLed
and restarted. Afterwards the ledger (the control plane's usage events) is compared with what
each client received, request by request.

Also: two gateways leasing one prepaid tenant's credit under load never let it overspend."""

import json
import signal
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from conftest import Proc, binary, models_dir

EMBED = "all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """`wattmesh control`, one `wattmesh agent` and gateways, each its own process."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "control"
        self.control_port = free_port()
        self.control_url = f"http://127.0.0.1:{self.control_port}"
        self.procs: dict[str, Proc] = {}
        self.gateways: dict[str, tuple[str, int]] = {}

    def start_control(self):
        self.procs["control"] = Proc(
            [binary(), "control", "--listen", f"127.0.0.1:{self.control_port}",
             "--data-dir", str(self.data)], self.root / "control.log")
        self.procs["control"].wait_for(r"control API on")
        self.admin = (self.data / "admin-token").read_text().strip()

    def api(self, method, path, body=None):
        r = httpx.request(method, f"{self.control_url}/api/v1{path}", json=body,
                          headers={"authorization": f"Bearer {self.admin}"}, timeout=10)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def cli(self, *args):
        return __import__("subprocess").run(
            [binary(), *args, "--data-dir", str(self.data), "--control-url", self.control_url],
            capture_output=True, text=True, timeout=60, check=True).stdout

    def start_agent(self):
        self.procs["agent"] = Proc(
            [binary(), "agent", "--control-url", self.control_url, "--site", "s1",
             "--region", "r1", "--data-dir", str(self.data), "--models-dir", models_dir()],
            self.root / "agent.log")

    def start_gateway(self, name: str):
        if name not in self.gateways:
            token = self.cli("gateways", "create", name).strip().splitlines()[-1]
            self.gateways[name] = (token, free_port())
        token, port = self.gateways[name]
        self.procs[name] = Proc(
            [binary(), "gateway", "--listen", f"127.0.0.1:{port}", "--control-url",
             self.control_url, "--token", token, "--spool", str(self.root / f"{name}.spool"),
             "--metrics-listen", "127.0.0.1:0"],
            self.root / f"{name}.log")
        self.procs[name].wait_for(r"gateway on")
        return f"http://127.0.0.1:{port}/v1"

    def kill(self, name: str):
        self.procs[name].stop(sig=signal.SIGKILL)

    def stop_all(self):
        for p in self.procs.values():
            p.stop(sig=signal.SIGINT)

    def billed_events(self) -> dict:
        db = sqlite3.connect(f"file:{self.data / 'wattmesh.db'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT request_id, prompt_tokens, completion_tokens, tenant FROM usage_events"
            ).fetchall()
        finally:
            db.close()
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids)), "a request was billed twice"
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.start_control()
    c.api("POST", "/models", {"name": EMBED, "kind": "embedding", "artifact": EMBED,
                              "memory_bytes": 512 << 20})
    c.api("POST", "/deployments", {"name": EMBED, "model": EMBED, "replicas": 1})
    c.api("POST", "/prices", {"model": EMBED, "input_per_1m": "0.02", "output_per_1m": "0"})
    c.start_agent()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        replicas = c.api("GET", "/replicas")
        if replicas and all(r["state"] == "ready" for r in replicas):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the embedding replica never became ready")
    yield c
    c.stop_all()


def load(base_urls, key, stop: threading.Event, record: list, errors: list):
    """Sends embeddings round-robin over the gateways until `stop`; records what came back."""
    clients = [openai.OpenAI(api_key=key, base_url=u, max_retries=0, timeout=10)
               for u in base_urls]
    i = 0
    while not stop.is_set():
        c = clients[i % len(clients)]
        i += 1
        try:
            raw = c.embeddings.with_raw_response.create(model=EMBED, input=f"text {i} " * 3)
            body = raw.parse()
            record.append((raw.headers["x-request-id"], body.usage.prompt_tokens))
        except (openai.APIConnectionError, openai.APIStatusError) as e:
            errors.append(e)
            time.sleep(0.05)


def wait_until(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_billed_equals_served_across_gateway_and_control_plane_crashes(cluster):
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    cluster.cli("tenants", "create", tenant)
    key = cluster.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]
    urls = [cluster.start_gateway("gw-a"), cluster.start_gateway("gw-b")]
    # Both gateways have the key before the load starts.
    for u in urls:
        wait_until("the gateway to know the key", lambda: _accepts(u, key))

    stop, record, errors = threading.Event(), [], []
    threads = [threading.Thread(target=load, args=(urls, key, stop, record, errors))
               for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        cluster.kill("gw-a")
        killed_at = len(record)
        time.sleep(0.5)
        cluster.start_gateway("gw-a")
        time.sleep(1.5)
        cluster.kill("control")
        time.sleep(1)
        cluster.start_control()
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert killed_at > 0 and len(record) > killed_at, "load did not run across the crashes"

    served = dict(record)
    assert len(served) == len(record), "two answers carried one request id"

    def shipped():
        billed = cluster.billed_events()
        return all(rid in billed for rid in served)

    wait_until("every served request to be billed", shipped, timeout=60)
    billed = {rid: v for rid, v in cluster.billed_events().items() if v[2] == tenant}
    for rid, prompt in served.items():
        assert billed[rid][:2] == (prompt, 0), f"{rid}: served {prompt}, billed {billed[rid]}"
    # Billed but not received: only requests cut by the gateway's crash, never more than the
    # clients saw fail.
    extra = set(billed) - set(served)
    assert len(extra) <= len(errors), f"{len(extra)} billed unserved, {len(errors)} errors"
    print(f"served {len(served)}, billed {len(billed)}, client errors {len(errors)}")
    totals = json.loads(cluster.cli("usage", "--tenant", tenant, "--json"))
    assert totals[0]["requests"] == len(billed)
    assert totals[0]["prompt_tokens"] == sum(v[0] for v in billed.values())


def _accepts(base_url, key) -> bool:
    try:
        openai.OpenAI(api_key=key, base_url=base_url, max_retries=0).models.list()
        return True
    except openai.APIError:
        return False


def test_two_gateways_never_let_a_prepaid_tenant_overspend(cluster):
    tenant = f"prepaid-{uuid.uuid4().hex[:8]}"
    cluster.cli("tenants", "create", tenant, "--plan", "prepaid")
    key = cluster.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]
    # About 60 requests' worth at the worst case (the request body bounds the prompt).
    cluster.cli("tenants", "top-up", tenant, "0.00005")
    urls = [f"http://127.0.0.1:{cluster.gateways[g][1]}/v1" for g in ("gw-a", "gw-b")]
    for u in urls:
        wait_until("the gateway to know the key", lambda: _accepts(u, key))
    stop, record, errors = threading.Event(), [], []
    threads = [threading.Thread(target=load, args=(urls, key, stop, record, errors))
               for _ in range(4)]
    for t in threads:
        t.start()

    def spent():
        quota = [e for e in errors if getattr(e, "code", None) == "insufficient_quota"]
        return len(quota) >= 20

    try:
        wait_until("the credit to run out on both gateways", spent, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert record, "nothing was served"
    others = [e for e in errors if getattr(e, "code", None) != "insufficient_quota"]
    assert not others, f"unexpected errors: {others[:3]}"
    wait_until("every served request to be billed",
               lambda: all(rid in cluster.billed_events() for rid, _ in record))
    shown = json.loads(cluster.cli("tenants", "show", tenant, "--json"))
    balance = float(shown["tenant"]["balance"])
    print(f"served {len(record)} on credit, then {len(errors)} refusals; balance {balance}")
    # One request's worst case here is far below this bound; the guarantee is "no more than
    # one request per gateway", and the leases make it none at all.
    one_request = 0.02 * 200 / 1e6
    assert balance >= -2 * one_request, f"overspent: balance {balance}"


def test_two_gateways_share_a_keys_rate_limit_instead_of_each_granting_it(cluster):
    """A limit is the fleet's: each live gateway enforces its share, so a client spreading its
    requests over both gets the limit, not twice it (at most one request per gateway more)."""
    tenant = f"limited-{uuid.uuid4().hex[:8]}"
    cluster.cli("tenants", "create", tenant)
    rpm = 30
    key = cluster.cli("keys", "create", "--tenant", tenant, "--rpm", str(rpm)).strip().splitlines()[-1]
    urls = [f"http://127.0.0.1:{cluster.gateways[g][1]}/v1" for g in ("gw-a", "gw-b")]
    for u in urls:
        wait_until("the gateway to know the key", lambda: _accepts(u, key))
    clients = [openai.OpenAI(api_key=key, base_url=u, max_retries=0, timeout=10) for u in urls]
    admitted, limited, limits_shown = 0, 0, set()
    start = time.monotonic()
    for i in range(4 * rpm):
        try:
            raw = clients[i % 2].embeddings.with_raw_response.create(model=EMBED, input="x")
            admitted += 1
            limits_shown.add(raw.headers["x-ratelimit-limit-requests"])
        except openai.RateLimitError as e:
            assert e.code == "rate_limit_exceeded"
            limited += 1
    elapsed = time.monotonic() - start
    refilled = elapsed * rpm / 60
    print(f"admitted {admitted}, limited {limited} in {elapsed:.1f} s (refill {refilled:.1f})")
    assert limits_shown == {str(rpm)}, "every answer shows the whole limit"
    # A restarted gateway's old process counts for up to 45 s after the crash test, so each
    # gateway may hold a third rather than a half: still at least two thirds of the limit.
    assert admitted >= 2 * rpm // 3, f"only {admitted} of {rpm} admitted"
    assert admitted <= rpm + refilled + 2, f"{admitted} admitted against a limit of {rpm}"
    assert limited > 0
