"""The energy side of `wattmesh up` as an operator meets it: every simulated site has its own
simulated miners (on their own ports, speaking the CGMiner API and LuxOS) and a simulated site
meter; the banner names them, `wattmesh miners` reads them, and a sleep is confirmed by each
miner's own telemetry."""

import json
import re
import subprocess

from conftest import binary

SITES = ["georgia-1", "asuncion-1", "addis-1"]


def miners(*args):
    return subprocess.run([binary(), "miners", *args], capture_output=True, text=True, timeout=120)


def test_each_site_has_miners_that_answer_and_sleep_on_command(fleet):
    lists = {}
    for site in SITES:
        line = fleet.up.wait_for(rf"miners\s+{site}: (\d+) × (.+?), meter (\S+) "
                                 r"\(wattmesh miners status --miners @(\S+)\)")
        count, model, meter, path = line.groups()
        assert int(count) == 100 and model == "Antminer S21", line.group(0)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", meter), meter
        lists[site] = path

    status = miners("status", "--miners", "@" + lists["addis-1"], "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert len(rows) == 100
    assert all(r["state"] == "hashing" and r["watts"] > 1000 for r in rows), rows[:3]

    slept = miners("sleep", "--miners", "@" + lists["addis-1"], "--json")
    assert slept.returncode == 0, slept.stderr
    rows = json.loads(slept.stdout)
    assert len(rows) == 100
    assert all(r["error"] is None and r["confirmed_after_s"] is not None for r in rows), rows[:3]
    assert max(r["acknowledged_after_s"] for r in rows) < 10

    status = miners("status", "--miners", "@" + lists["addis-1"], "--json")
    assert all(r["state"] == "asleep" for r in json.loads(status.stdout))
    # The other sites' miners are untouched.
    status = miners("status", "--miners", "@" + lists["georgia-1"], "--json")
    assert all(r["state"] == "hashing" for r in json.loads(status.stdout))

    missing = miners("status", "--miners", "@/nonexistent/miners.txt")
    assert missing.returncode != 0 and "cannot read the miner list" in missing.stderr
