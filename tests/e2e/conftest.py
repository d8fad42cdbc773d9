"""Fixtures that start the real `wattmesh` binary and read what it prints.

The binary is $WATTMESH_BIN (scripts/test builds it); models come from
$WATTMESH_TEST_MODELS, which scripts/test fills with `wattmesh models pull`.
A missing binary or model fails the run with the command that fixes it.
"""

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    path = Path(os.environ.get("WATTMESH_BIN", ROOT / "target" / "debug" / "wattmesh"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run ./scripts/test (or `cargo build -p wattmesh`)")
    return str(path)


def models_dir() -> str:
    path = Path(os.environ.get("WATTMESH_TEST_MODELS", ROOT / "target" / "test-data" / "models"))
    if not (path / "smollm2-135m-instruct").exists() or not (path / "all-minilm-l6-v2").exists():
        pytest.fail(
            f"models missing in {path}: run ./scripts/test, or "
            f"`{binary()} models pull --models-dir {path}`"
        )
    return str(path)


class Proc:
    """A child process whose stdout lines are collected by a thread, so tests can wait for a
    line without blocking forever."""

    def __init__(self, args, log_path: Path):
        self.args = args
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "WATTMESH_LOG": os.environ.get("WATTMESH_LOG", "info")},
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match:
        """Returns the first stdout line (seen so far or later) matching `pattern`."""
        rx = re.compile(pattern)
        for line in self.seen:
            if m := rx.search(line):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self.lines.empty():
                pytest.fail(f"{self.args[1]} exited with {self.proc.returncode} before printing "
                            f"/{pattern}/; its log: {self.log.name}")
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if m := rx.search(line):
                return m
        pytest.fail(f"no line matching /{pattern}/ within {timeout}s; saw {self.seen[-10:]}")

    def stop(self, sig=signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"{self.args[1]} did not stop within {timeout}s of {sig!r}")
        self.log.close()
        return self.proc.returncode


class Fleet:
    """`wattmesh up` on ephemeral loopback ports, in a fresh data directory."""

    def __init__(self, data_dir: Path, log_dir: Path):
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.key = None

    def start(self):
        self.up = Proc(
            [binary(), "up", "--data-dir", str(self.data_dir), "--models-dir", models_dir(),
             "--gateway-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
             "--gateway-metrics-listen", "127.0.0.1:0"],
            self.log_dir / "up.log",
        )
        self.gateway_url = self.up.wait_for(r"gateway\s+(http://\S+/v1)").group(1)
        self.control_url = self.up.wait_for(r"control API\s+(http://[^/\s]+)").group(1)
        self.metrics_url = self.up.wait_for(r"metrics\s+(http://\S+/metrics)").group(1)
        self.up.wait_for(r"all \d+ replicas ready", timeout=300)
        self.wait_for_plans_applied()
        return self

    def wait_for_plans_applied(self, timeout: float = 180.0):
        """Waits until every simulated site's agent reported applying its first power plan, so
        no test commands a miner while the agent is setting it to its plan's target."""
        sites = [m.group(1) for m in (self.up.wait_for(rf"^planned ({s}):") for s in
                                      ("georgia-1", "asuncion-1", "addis-1"))]
        deadline = time.monotonic() + timeout
        pending = set(sites)
        while pending and time.monotonic() < deadline:
            for site in sorted(pending):
                plans = json.loads(self.cli("planner", "plans", site, "--limit", "1",
                                            "--json").stdout)
                if plans and plans[0]["report"]:
                    pending.discard(site)
            time.sleep(0.5)
        if pending:
            pytest.fail(f"no applied power plan reported for {sorted(pending)} within {timeout}s")

    def cli(self, *args, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary(), *args, "--data-dir", str(self.data_dir), "--control-url", self.control_url],
            capture_output=True, text=True, timeout=60, check=check,
        )


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    data = tmp_path_factory.mktemp("wattmesh-data")
    fleet = Fleet(data, tmp_path_factory.mktemp("logs"))
    fleet.start()
    # The first start prints the demo key on the line after its label.
    fleet.key = fleet.up.wait_for(r"^(sk-wm-\S+)$").group(1)
    yield fleet
    fleet.up.stop()
