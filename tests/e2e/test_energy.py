"""The energy side of `wattmesh up` as an operator meets it: every simulated site has its own
simulated miners (on their own ports, speaking the CGMiner API and LuxOS) and a simulated site
meter; the banner names them, `wattmesh miners` reads them, and a sleep is confirmed by each
miner's own telemetry. Demand-response events shed a site, and the live planner plans every
site, whose agent applies and confirms the plan."""

import json
import re
import subprocess
import time

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


def test_a_dr_event_sleeps_a_sites_miners_the_meter_follows_and_traffic_moves(fleet):
    """The issue's end-to-end check: a demand-response event on one site puts its simulated
    miners to sleep (each acknowledgement recorded), its meter comes down to the target, and
    its interactive traffic moves to a site in another region; cancelled, it is judged held."""
    import openai
    from test_money import CHAT, HELLO, new_key, tenant, wait_for

    status = json.loads(fleet.cli("status", "--json").stdout)
    replica_sites = sorted({r["site"] for r in status["replicas"] if r["state"] == "ready"})
    assert len(replica_sites) == 2, status["replicas"]
    # addis-1's miners are slept by hand in the test above; use the other replica site.
    site = next(s for s in replica_sites if s != "addis-1")
    other = next(s for s in replica_sites if s != site)
    region = {s["name"]: s["region"] for s in status["sites"]}
    assert region[site] != region[other]
    miner_list = str(fleet.data_dir / f"miners-{site}.txt")

    # The agent reports its meter and miners; `status` shows the last reading.
    def metered():
        sites = json.loads(fleet.cli("status", "--json").stdout)["sites"]
        power = next(s["power"] for s in sites if s["name"] == site)
        return power if power and power["meter_kw"] and power["miners"]["hashing"] == 100 else None

    power = wait_for(f"{site}'s agent to report its meter and 100 hashing miners", metered)
    assert power["meter_kw"] > 300 and power["miners"]["kw"] > 300, power
    assert "hashing" in fleet.cli("status").stdout

    created = fleet.cli("dr", "create", site, "--down-to-kw", "10", "--duration", "10m",
                        "--note", "e2e", "--json")
    event = json.loads(created.stdout)
    assert event["status"] == "active" and event["target_kw"] == 10.0, event
    # 100 S21s draw ~350 kW; the 5% cooling besides them is above 10 kW: inference goes too.
    assert event["shed_inference"] is True, event
    event_id = event["id"]

    def report():
        return json.loads(fleet.cli("dr", "show", event_id, "--json").stdout)

    def acknowledged_and_reached():
        r = report()
        o = r["outcome"]
        done = o["miners_acknowledged"] == 100 and o["target_reached_after_s"] is not None
        return r if done else None

    r = wait_for("every miner to acknowledge and the meter to reach the target",
                 acknowledged_and_reached, timeout=90)
    o = r["outcome"]
    assert o["miners_total"] == 100 and o["all_acknowledged_after_s"] is not None, o
    assert all(m["error"] is None and m["confirmed_ms"] for m in r["miners"]), r["miners"][:3]
    print(f"DR {site}: all miners acknowledged after {o['all_acknowledged_after_s']:.1f} s, "
          f"meter at target after {o['target_reached_after_s']:.1f} s")
    before = [s for s in r["samples"] if s["at_ms"] < r["event"]["starts_at_ms"]]
    after = [s for s in r["samples"] if s["at_ms"] >= r["event"]["starts_at_ms"]]
    assert before and before[-1]["meter_kw"] > 300, before[-1:]
    assert after[-1]["meter_kw"] <= 10.1, after[-1]
    rows = json.loads(miners("status", "--miners", "@" + miner_list, "--json").stdout)
    assert all(row["state"] == "asleep" for row in rows), rows[:3]

    # Interactive traffic now goes to the other region's site.
    name = tenant(fleet)
    key = new_key(fleet, name)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    c = openai.OpenAI(api_key=key, base_url=fleet.gateway_url, max_retries=0)
    for _ in range(6):
        c.chat.completions.create(model=CHAT, messages=HELLO, temperature=0, max_tokens=4)

    def by_site():
        rows = json.loads(fleet.cli("usage", "--tenant", name, "--group-by", "site", "--from",
                                    since, "--json").stdout)
        return rows if sum(row["requests"] for row in rows) == 6 else None

    rows = wait_for("the 6 requests to be billed", by_site)
    assert {row["group"]: row["requests"] for row in rows} == {other: 6}, rows

    # The watch view prints the record; cancelling ends the event, and it held.
    cancelled = fleet.cli("dr", "cancel", event_id)
    assert "miners wake" in cancelled.stdout
    shown = fleet.cli("dr", "show", event_id).stdout
    assert "held: yes" in shown and "100 of 100 acknowledged" in shown, shown
    watched = subprocess.run([binary(), "dr", "show", event_id, "--watch", "--data-dir",
                              str(fleet.data_dir), "--control-url", fleet.control_url],
                             capture_output=True, text=True, timeout=60)
    assert watched.returncode == 0 and "held: yes" in watched.stdout, watched.stdout
    listed = json.loads(fleet.cli("dr", "list", "--site", site, "--json").stdout)
    assert [e["status"] for e in listed] == ["cancelled"], listed

    # Told to wake, the miners come back in staggered waves.
    def hashing():
        rows = json.loads(miners("status", "--miners", "@" + miner_list, "--json").stdout)
        return sum(row["state"] == "hashing" for row in rows) >= 50
    wait_for("the first wave of miners to hash again", hashing, timeout=90)

    # Broken asks are refused by the CLI with the control plane's reason.
    bad = fleet.cli("dr", "create", site, "--by-pct", "150", "--duration", "5m", check=False)
    assert bad.returncode != 0 and "reduce_by_pct" in bad.stderr, bad.stderr
    bad = fleet.cli("dr", "create", "atlantis", "--down-to-kw", "1", "--duration", "5m",
                    check=False)
    assert bad.returncode != 0 and "atlantis" in bad.stderr, bad.stderr


def test_each_site_is_planned_and_its_agent_applies_and_confirms_the_plan(fleet):
    """The live planner in `wattmesh up`: every site has a power model and a plan its agent
    applied and confirmed; a price spike imported for the site (a market CSV, through the CLI)
    replans it and puts every miner to sleep (confirmed by the miners and the meter), and the
    corrected prices wake them."""
    from test_money import wait_for

    site = "addis-1"
    miner_list = str(fleet.data_dir / f"miners-{site}.txt")
    model = json.loads(fleet.cli("planner", "model", "show", site, "--json").stdout)
    assert model["spec"]["asic_groups"] == [
        {"name": None, "model": "Antminer S21", "units": 100, "ramp_up_s": None,
         "hosting_usd_per_mwh": None}], model
    for s in SITES:
        plans = json.loads(fleet.cli("planner", "plans", s, "--json").stdout)
        # Some plan applied: not always the first — a plan made just before an interval starts
        # is replaced by the next interval's before the agent gets to it, and is never applied.
        assert any(p["report"] and p["report"]["outcome"] == "applied" for p in plans), plans

    def reported(plan_id):
        def check():
            plans = json.loads(fleet.cli("planner", "plans", site, "--limit", "20",
                                         "--json").stdout)
            plan = next((p for p in plans if p["id"] == plan_id), None)
            return plan["report"] if plan and plan["report"] else None
        return check

    def states():
        rows = json.loads(miners("status", "--miners", "@" + miner_list, "--json").stdout)
        return {r["state"] for r in rows}

    def prices_file(usd_per_mwh: float) -> str:
        """An hour of 15-minute prices from the interval at hand, as a market exports them."""
        start = int(time.time()) // 900 * 900
        path = fleet.data_dir / f"prices-{usd_per_mwh:g}.csv"
        path.write_text("timestamp,usd_per_mwh\n" + "".join(
            f"{start + i * 900},{usd_per_mwh}\n" for i in range(4)))
        return str(path)

    def imported(usd_per_mwh: float) -> dict:
        receipt = json.loads(fleet.cli("planner", "site-prices", "import", site, "--file",
                                       prices_file(usd_per_mwh), "--json").stdout)
        assert receipt["imported"] == 4 and receipt["replanned"], receipt
        plans = json.loads(fleet.cli("planner", "plans", site, "--limit", "1", "--json").stdout)
        assert plans[0]["id"] == receipt["replanned"], (plans, receipt)
        assert plans[0]["interval"]["usd_per_mwh"] == usd_per_mwh, plans[0]["interval"]
        return plans[0]

    # A $3,000/MWh spike: far above the S21's break-even at February 2026's hashprice.
    plan = imported(3000.0)
    try:
        assert [g["units_hashing"] for g in plan["directive"]["asic_groups"]] == [0], plan
        report = wait_for("the agent to sleep every miner and report it",
                          reported(plan["id"]), timeout=120)
        assert report["outcome"] == "applied", report
        assert (report["miners_asleep"], report["miners_hashing"]) == (100, 0), report
        assert report["meter_kw"] is not None and report["meter_kw"] < 10, report
        assert states() == {"asleep"}
        shown = fleet.cli("planner", "plans", site, "--limit", "1").stdout
        assert "applied" in shown and "0/100" in shown, shown
        listed = fleet.cli("planner", "site-prices", "show", site).stdout
        assert "3000.00" in listed and "tariff" in listed, listed
    finally:
        # The market's corrected figures replace the spike: mining pays again.
        plan = imported(20.0)
    assert [g["units_hashing"] for g in plan["directive"]["asic_groups"]] == [100], plan
    # Two waves 30 s apart, each ramping up for two minutes (FACTS.md's S21).
    report = wait_for("the agent to wake every miner and report it", reported(plan["id"]),
                      timeout=300)
    assert report["outcome"] == "applied" and report["miners_hashing"] == 100, report
    assert states() == {"hashing"}

    # Broken asks are refused with the control plane's reason.
    bad = fleet.cli("planner", "run", "atlantis", check=False)
    assert bad.returncode != 0 and "atlantis" in bad.stderr, bad.stderr
    wrong = fleet.data_dir / "wrong-site.toml"
    wrong.write_text('name = "georgia-1"\ninterconnect_kw = 100.0\n')
    bad = fleet.cli("planner", "model", "set", site, "--file", str(wrong), check=False)
    assert bad.returncode != 0 and "name" in bad.stderr, bad.stderr
    bad = fleet.cli("planner", "plans", site, "--limit", "0", check=False)
    assert bad.returncode != 0 and "limit" in bad.stderr, bad.stderr
    gap = fleet.data_dir / "gap.csv"
    gap.write_text("timestamp,usd_per_mwh\n0,10\n900,10\n2700,10\n")
    bad = fleet.cli("planner", "site-prices", "import", site, "--file", str(gap), check=False)
    assert bad.returncode != 0 and "line 4" in bad.stderr, bad.stderr
