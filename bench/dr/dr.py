#!/usr/bin/env python3
"""Helpers of bench/dr/run (the demand-response benchmark, issue 9); the standard library only.

  dr.py ready STATUS_JSON SITES UNITS     exit 0 when every site's last sample shows all miners
                                          hashing and a meter reading; prints where it stands
  dr.py pending DIR SITE...               prints the sites whose record (`dr show --json`) lacks
                                          a figure; writes DIR/known-SITE for the others
  dr.py cpu OUT ROLE=PID,PID ...          snapshot of CPU ticks by role and of the whole machine
  dr.py cpu-trace OUT ROLE=PID,PID ...    the cores each role used, second by second, until killed
  dr.py summary DIR OUT                   one fleet size's figures (DIR: what run collected)
  dr.py combine OUT FILE...               the sizes' figures in one JSON and one table

Times are seconds from each event's start (the instant of its creation: the events start
"now"); fleet-wide ones from the earliest start of the run's events.
"""

import json
import os
import statistics
import sys
import time

# The targets (issue 9): per site, every miner's acknowledgement within 10 s and the
# meter at the target within 30 s; the whole fleet at the target within 60 s.
ACK_TARGET_S = 10.0
METER_TARGET_S = 30.0
FLEET_TARGET_S = 60.0


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ready(status_path, sites, units):
    status = load(status_path)
    power = {s["name"]: s.get("power") for s in status.get("sites", [])}
    waiting = []
    for i in range(1, sites + 1):
        name = f"site-{i}"
        p = power.get(name)
        if p is None:
            waiting.append(f"{name}: no sample yet")
            continue
        m = p["miners"]
        if m["total"] != units or m["hashing"] != units or p.get("meter_kw") is None:
            waiting.append(
                f"{name}: {m['hashing']} of {m['total']} hashing, meter {p.get('meter_kw')}"
            )
    if waiting:
        print(f"{len(waiting)} of {sites} sites not ready, e.g. {waiting[0]}")
        return 1
    return 0


def finished(report):
    o = report["outcome"]
    return (
        o["all_acknowledged_after_s"] is not None and o["target_reached_after_s"] is not None
    )


def pending(d, sites):
    """Prints the sites of `sites` whose record in DIR lacks a figure; marks the others done."""
    now_ms = int(time.time() * 1000)
    left = []
    for i in sites:
        if finished(load(os.path.join(d, f"report-{i}.json"))):
            with open(os.path.join(d, f"known-{i}"), "w", encoding="ascii") as f:
                f.write(str(now_ms))
        else:
            left.append(i)
    print(" ".join(left))
    return 0


def cpu(out, roles):
    """Writes a snapshot of CPU ticks to OUT."""
    with open(out, "w", encoding="utf-8") as f:
        json.dump(snapshot(roles), f)
    return 0


def cpu_trace(out, roles):
    """Appends the cores each role used over every second to OUT (JSON lines), until killed."""
    start = before = snapshot(roles)
    with open(out, "w", encoding="utf-8") as f:
        while True:
            time.sleep(1)
            try:
                now = snapshot(roles)
            except OSError:
                return 0  # the processes are gone
            shares = cpu_shares(before, now)
            shares["t"] = round(now["at"] - start["at"], 1)
            f.write(json.dumps(shares) + "\n")
            f.flush()
            before = now


def snapshot(roles):
    """Ticks (utime + stime) of each role's processes, and busy / all ticks of the machine."""
    snap = {"at": time.time(), "roles": {}}
    for arg in roles:
        role, _, pids = arg.partition("=")
        ticks = 0
        for pid in filter(None, pids.split(",")):
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # Fields 14 and 15 of proc(5), counted after the command name's ')'.
            ticks += int(fields[11]) + int(fields[12])
        snap["roles"][role] = ticks
    with open("/proc/stat", encoding="ascii") as f:
        line = f.readline().split()
    values = [int(v) for v in line[1:]]
    idle = values[3] + values[4]  # idle + iowait
    snap["machine_all"] = sum(values[:8])
    snap["machine_busy"] = sum(values[:8]) - idle
    return snap


def cpu_shares(before, after):
    """Cores used by each role, by everything else, and in all, between two snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    wall = after["at"] - before["at"]
    if wall <= 0:
        return None
    cores = {
        role: round((after["roles"][role] - before["roles"][role]) / hz / wall, 2)
        for role in after["roles"]
    }
    ncpu = os.cpu_count() or 1
    busy_share = (after["machine_busy"] - before["machine_busy"]) / max(
        1, after["machine_all"] - before["machine_all"]
    )
    cores["machine"] = round(busy_share * ncpu, 2)
    cores["others"] = round(max(0.0, cores["machine"] - sum(cores[r] for r in after["roles"])), 2)
    cores["seconds"] = round(wall, 1)
    return cores


def trace(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def r2(x):
    return None if x is None else round(x, 2)


def summary(d, out):
    meta = load(os.path.join(d, "meta.json"))
    sites = []
    for i in range(1, meta["sites"] + 1):
        event = load(os.path.join(d, f"event-{i}.json"))
        report = load(os.path.join(d, f"report-{i}.json"))
        start = event["starts_at_ms"]
        o = report["outcome"]
        acks = [
            (m["acknowledged_ms"] - start) / 1e3
            for m in report["miners"]
            if m["acknowledged_ms"] is not None
        ]
        confirmed = [
            (m["confirmed_ms"] - start) / 1e3
            for m in report["miners"]
            if m["confirmed_ms"] is not None
        ]
        errors = [m["error"] for m in report["miners"] if m["error"]]
        known_path = os.path.join(d, f"known-{i}")
        known = None
        if os.path.exists(known_path):
            with open(known_path, encoding="ascii") as f:
                known = int(f.read())
        sites.append(
            {
                "site": event["site"],
                "event": event["id"],
                "starts_at_ms": start,
                "target_kw": event["target_kw"],
                "baseline_kw": event["baseline_kw"],
                "miners_total": o["miners_total"],
                "miners_acknowledged": o["miners_acknowledged"],
                "all_acknowledged_after_s": o["all_acknowledged_after_s"],
                "target_reached_after_s": o["target_reached_after_s"],
                "first_ack_after_s": r2(min(acks)) if acks else None,
                "median_miner_ack_after_s": r2(statistics.median(acks)) if acks else None,
                "all_confirmed_after_s": (
                    r2(max(confirmed)) if len(confirmed) == o["miners_total"] > 0 else None
                ),
                "known_to_control_after_s": r2((known - start) / 1e3) if known else None,
                "miner_errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
    first_start = min(s["starts_at_ms"] for s in sites)
    last_start = max(s["starts_at_ms"] for s in sites)

    def fleet(key):
        """Seconds from the earliest start to the last site's `key`; None if one lacks it."""
        ends = [
            s["starts_at_ms"] + s[key] * 1e3 if s[key] is not None else None for s in sites
        ]
        if any(e is None for e in ends):
            return None
        return r2((max(ends) - first_start) / 1e3)

    def over_sites(key):
        values = [s[key] for s in sites if s[key] is not None]
        complete = len(values) == len(sites)
        return {
            "median": r2(statistics.median(values)) if values else None,
            "max": r2(max(values)) if complete else None,
            "sites_with_it": len(values),
        }

    acks = over_sites("all_acknowledged_after_s")
    target = over_sites("target_reached_after_s")
    fleet_ack = fleet("all_acknowledged_after_s")
    fleet_target = fleet("target_reached_after_s")
    met = {
        "acks_per_site_le_10s": acks["max"] is not None and acks["max"] <= ACK_TARGET_S,
        "target_per_site_le_30s": target["max"] is not None and target["max"] <= METER_TARGET_S,
        "fleet_le_60s": fleet_target is not None
        and fleet_ack is not None
        and max(fleet_target, fleet_ack) <= FLEET_TARGET_S,
    }
    result = {
        "sites": meta["sites"],
        "units_per_site": meta["units"],
        "miners": meta["sites"] * meta["units"],
        "target_kw_per_site": meta["target_kw"],
        "sample_every_s": meta["sample_every_s"],
        "start": "now (each event starts when it is created; the events are created together)",
        "creation_spread_s": r2((last_start - first_start) / 1e3),
        "completed": meta["completed"],
        "all_acknowledged_after_s": acks,
        "target_reached_after_s": target,
        "median_miner_ack_after_s": over_sites("median_miner_ack_after_s"),
        "first_ack_after_s": over_sites("first_ack_after_s"),
        "all_confirmed_after_s": over_sites("all_confirmed_after_s"),
        "known_to_control_after_s": over_sites("known_to_control_after_s"),
        "fleet_all_acknowledged_after_s": fleet_ack,
        "fleet_target_reached_after_s": fleet_target,
        "targets_met": met,
        "cpu_cores_steady": cpu_shares(
            load(os.path.join(d, "cpu-steady-0.json")), load(os.path.join(d, "cpu-steady-1.json"))
        ),
        "cpu_cores_during_dr": cpu_shares(
            load(os.path.join(d, "cpu-dr-0.json")), load(os.path.join(d, "cpu-dr-1.json"))
        ),
        "failed_reads_of_records": meta["failed_reads"],
        "failed_cancels": meta["failed_cancels"],
        "cpu_cores_trace": trace(os.path.join(d, "cpu-trace.jsonl")),
        "per_site": sites,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print_table([result])
    return 0


def fmt(x):
    return "-" if x is None else f"{x:.2f}"


def print_table(results):
    head = (
        "sites  miners  acks med/max (s)  target med/max (s)  fleet acks/target (s)"
        "  first ack max (s)  targets met"
    )
    print(head)
    for r in results:
        a, t = r["all_acknowledged_after_s"], r["target_reached_after_s"]
        met = r["targets_met"]
        ok = "yes" if all(met.values()) else "no (" + ", ".join(k for k, v in met.items() if not v) + ")"
        print(
            f"{r['sites']:>5}  {r['miners']:>6}  {fmt(a['median']):>6} / {fmt(a['max']):<6}"
            f"  {fmt(t['median']):>8} / {fmt(t['max']):<7}"
            f"  {fmt(r['fleet_all_acknowledged_after_s']):>10} / {fmt(r['fleet_target_reached_after_s']):<8}"
            f"  {fmt(r['first_ack_after_s']['max']):>17}  {ok}"
        )
    for r in results:
        s, d = r["cpu_cores_steady"], r["cpu_cores_during_dr"]
        print(
            f"{r['sites']:>5} sites, cores used (of {os.cpu_count()}): steady {s}; during the DR {d}"
        )


def combine(out, files):
    results = [load(f) for f in files]
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": results}, f, indent=2)
    print_table(results)
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "ready" and len(args) == 3:
        return ready(args[0], int(args[1]), int(args[2]))
    if cmd == "pending" and args:
        return pending(args[0], args[1:])
    if cmd == "cpu" and args:
        return cpu(args[0], args[1:])
    if cmd == "cpu-trace" and args:
        return cpu_trace(args[0], args[1:])
    if cmd == "summary" and len(args) == 2:
        return summary(args[0], args[1])
    if cmd == "combine" and len(args) >= 2:
        return combine(args[0], args[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
