#!/usr/bin/env python3
"""Benchmark: write pause of CRDR transitions under load, through the pooled and the direct URI.

Starts its own pgcrdr (control plane + two local regions, real PostgreSQL) under a scratch home,
creates a primary and its recovery copy, runs pgbench through the pooled Service URI as
background load, and for each run performs: switchover, switchback, failover (primary region
killed), failback restore and failback takeover. Two acknowledged-write loggers (one per URI)
measure the longest gap between acknowledged writes around each transition, count client
errors, and check at the end that no acknowledged write was lost.

The floor (bench/floor.py) is measured in the same run: the same safe sequence done by hand on
two plain PostgreSQL instances behind a PgBouncer configured as pgcrdr's pooled URI, under the
same pgbench load and the same acknowledged-write logger. Each run does two floor moves (there and
back) and then the platform's moves; only one pgbench load runs at a time. The table gives every
transition's median pooled pause as a ratio to the floor's median: absolute times drift on these
shared machines, ratios measured side by side much less.

    .venv/bin/python bench/transitions.py [--runs 5] [--plan startup-4|business-4] [--no-failover]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.floor import FloorPair, Load, lost_writes, measure_floor  # noqa: E402
from tests.helpers import RunningPlatform, Writer, start_platform, stop_platform, wait_for  # noqa: E402

PROJECT = "pgcrdr"
PRI, REC = "bench-pri", "bench-rec"


def put_role(p: RunningPlatform, name: str, role: str) -> float:
    t0 = time.monotonic()
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{name}", json={"disaster_recovery_role": role})
        if r.status_code != 200:
            raise RuntimeError(f"{name} -> {role}: {r.status_code} {r.text}")
    return t0


def wait_done(p: RunningPlatform, name: str, timeout: float = 300) -> dict:
    def finished() -> dict | None:
        with p.api() as c:
            d = c.get(f"/v1/project/{PROJECT}/service/{name}/disaster-recovery").json()
        return d["history"][-1] if d["operation"] is None and d["history"] else None

    op = wait_for(f"operation on {name}", finished, timeout=timeout, interval=0.2)
    if op["state"] != "done":
        raise RuntimeError(f"operation {op['kind']} ended {op['state']}: {op['message']}")
    return op


def gap_around(w: Writer, t0: float, t1: float) -> float:
    """Longest gap between acknowledged writes that overlaps [t0, t1]."""
    times = sorted(w.log.ok_times)
    best = 0.0
    for a, b in zip(times, times[1:], strict=False):
        if b >= t0 and a <= t1:
            best = max(best, b - a)
    return best


def errors(w: Writer) -> int:
    return len(w.log.failed) + len(w.log.unknown)


# Each move's pooled pause over the median of the floor moves of its own run: the machine's load
# changes from run to run (other sessions' work on 2 shared cores) and slows a platform of many
# Python processes more than two bare PostgreSQL instances; pairing each move with the floor
# measured minutes before it compares them under the same conditions.
PAIRED = "pause pooled / its run's floor"

EVENTS: list[tuple[str, float, float]] = []  # (transition, request, done) on the monotonic clock


def explain_lost(lost: set[str], writers: list[Writer]) -> list[str]:
    """For each lost write: when it was acknowledged, relative to the nearest transition."""
    out = []
    for w in writers:
        for i, wid in enumerate(w.log.ok):
            if wid not in lost:
                continue
            t = w.log.ok_times[i]
            kind, t0, t1 = min(EVENTS, key=lambda e: min(abs(t - e[1]), abs(t - e[2]))) if EVENTS else ("-", t, t)
            out.append(f"{wid} acknowledged through {w.uri.split('@')[-1]} {t - t0:+.3f}s after the {kind} request "
                       f"({t - t1:+.3f}s after it was done)")
    return out


def median(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--plan", default="startup-4", choices=["startup-4", "business-4"])
    ap.add_argument("--no-failover", action="store_true", help="only planned moves")
    ap.add_argument("--port-offset", type=int, default=15000)
    args = ap.parse_args()

    rows: dict[str, dict[str, list[float]]] = {}
    op_steps: dict[str, dict[str, list[float]]] = {}  # transition -> operation step -> seconds
    floor_rows: dict[str, list[float]] = {}
    lost_total = floor_lost = 0
    loads: list[float] = []  # 1-minute load average at the start of each run (2 cores)
    writers: list[Writer] = []
    with contextlib.ExitStack() as stack:
        # The floor first: its processes are stopped by the ExitStack whatever fails later.
        floor = stack.enter_context(FloorPair(port_start=10900))
        floor_writer = Writer(floor.pooled_uri, interval=0.005, prepare_threshold=None)
        floor_writer.start()
        writers.append(floor_writer)
        p = start_platform(args.port_offset)
        stack.callback(stop_platform, p)
        try:
            direct, pooled, pooled_uri = setup_platform(p, args.plan)
            writers += [direct, pooled]
            for i in range(args.runs):
                loads.append(os.getloadavg()[0])
                print(f"run {i + 1}/{args.runs} (load average {loads[-1]:.1f})", file=sys.stderr)
                this_floor = measure_floor(floor, floor_writer, moves=2)
                for k, v in this_floor.items():
                    floor_rows.setdefault(k, []).extend(v)
                run_platform(p, pooled_uri, direct, pooled, rows, op_steps, args.no_failover,
                             run_floor=median(this_floor.get("pause pooled (s)", [])))
        finally:
            for w in writers:
                w.stop()
            try:
                floor_lost = lost_writes(floor, floor_writer)
            except psycopg.Error as exc:
                print(f"could not check the floor's lost writes: {exc}", file=sys.stderr)
                floor_lost = -1
            try:
                d_log, p_log = writers[1].log, writers[2].log
                with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10) as conn:
                    stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
                lost = (set(d_log.ok) | set(p_log.ok)) - stored
                lost_total = len(lost)
                for line in explain_lost(lost, writers[1:]):
                    print(f"lost: {line}", file=sys.stderr)
            except (IndexError, psycopg.Error, httpx.HTTPError) as exc:
                print(f"could not check lost writes: {exc}", file=sys.stderr)
                lost_total = -1

    floor_pause = median(floor_rows.get("pause pooled (s)", []))
    print()
    print(f"plan {args.plan}, {args.runs} runs; floor = the same sequence on plain PostgreSQL + PgBouncer "
          f"(bench/floor.py), {len(floor_rows.get('pause pooled (s)', []))} moves")
    print(f"{'transition':<20}{'measure':<34}{'median':>9}{'min':>9}{'max':>9}{'n':>4}{'x floor':>9}")
    for m, vals in floor_rows.items():
        ratio = f"{median(vals) / floor_pause:>9.2f}" if m == "pause pooled (s)" else ""
        print(f"{'floor':<20}{m:<34}{median(vals):>9.3f}{min(vals):>9.3f}{max(vals):>9.3f}{len(vals):>4}{ratio}")
    print(f"{'floor':<20}{'acknowledged writes lost':<34}{floor_lost:>9}")
    for kind, measures in rows.items():
        for m, vals in measures.items():
            ratio = f"{median(vals) / floor_pause:>9.2f}" if m == "pause pooled (s)" else ""
            print(f"{kind:<20}{m:<34}{median(vals):>9.3f}{min(vals):>9.3f}{max(vals):>9.3f}{len(vals):>4}{ratio}")
    print(f"{'all':<20}{'acknowledged writes lost':<34}{lost_total:>9}")
    if loads:
        print(f"load average at each run's start: {' '.join(f'{x:.1f}' for x in loads)} (2 cores); "
              f"'{PAIRED}' is each move over its own run's floor median")
    print("(failover loses at most the un-replicated tail the operation reports as bytes given up)")
    print()
    print("operation steps (s, median over runs; from the operation record)")
    for kind, steps in op_steps.items():
        print(f"  {kind:<20}" + "  ".join(f"{name}={median(v):.3f}" for name, v in steps.items()))
    return 0


def setup_platform(p: RunningPlatform, plan: str) -> tuple[Writer, Writer, str]:
    """The primary and its recovery copy; started acknowledged-write loggers on both URIs."""
    with p.api() as c:
        c.post(f"/v1/project/{PROJECT}/service", json={
            "service_name": PRI, "service_type": "pg", "plan": plan, "cloud": "local-europe-west1"
        }).raise_for_status()
    wait_for("primary RUNNING", lambda: p.service(PROJECT, PRI)["state"] == "RUNNING", timeout=180)
    svc = p.service(PROJECT, PRI)
    direct_uri, pooled_uri = svc["service_uri"], svc["connection_info"]["pgbouncer"][0]
    with psycopg.connect(direct_uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
    subprocess.run(["pgbench", "-i", "-s", "5", "-q", direct_uri], check=True, capture_output=True)
    with p.api() as c:
        c.post(f"/v1/project/{PROJECT}/service", json={
            "service_name": REC, "service_type": "pg", "plan": plan, "cloud": "local-us-east1",
            "service_integrations": [{"integration_type": "disaster_recovery", "source_service": PRI}],
        }).raise_for_status()
    wait_for("recovery RUNNING", lambda: p.service(PROJECT, REC)["state"] == "RUNNING", timeout=300)
    wait_done(p, PRI)
    direct = Writer(direct_uri, interval=0.005)
    pooled = Writer(pooled_uri, interval=0.005, prepare_threshold=None)
    direct.start()
    pooled.start()
    return direct, pooled, pooled_uri


def run_platform(p: RunningPlatform, pooled_uri: str, direct: Writer, pooled: Writer,
                 rows: dict[str, dict[str, list[float]]], op_steps: dict[str, dict[str, list[float]]],
                 no_failover: bool, run_floor: float = float("nan")) -> None:
    """One run of the platform's transitions. The planned moves run under pgbench through the
    pooled URI (a new pgbench for the takeover: pgbench's clients end at the failover's errors).
    ``run_floor``: the median pooled pause of this run's floor moves, for the paired ratio."""

    def measure(kind: str, name: str, role: str, settle: float = 1.0) -> dict:
        e_d, e_p = errors(direct), errors(pooled)
        t0 = put_role(p, name, role)
        op = wait_done(p, name)
        t1 = time.monotonic()
        EVENTS.append((kind, t0, t1))
        time.sleep(settle)
        r = rows.setdefault(kind, {})
        r.setdefault("pause pooled (s)", []).append(gap_around(pooled, t0, t1))
        r.setdefault(PAIRED, []).append(r["pause pooled (s)"][-1] / run_floor)
        r.setdefault("pause direct (s)", []).append(gap_around(direct, t0, t1))
        r.setdefault("errors pooled", []).append(errors(pooled) - e_p)
        r.setdefault("errors direct", []).append(errors(direct) - e_d)
        r.setdefault("operation write_pause_s", []).append(op["write_pause_s"] or 0.0)
        for s in op["steps"]:
            op_steps.setdefault(kind, {}).setdefault(s["name"], []).append(s["duration_s"] or 0.0)
        print(f"  {kind}: pooled gap {r['pause pooled (s)'][-1]:.3f}s, direct gap "
              f"{r['pause direct (s)'][-1]:.3f}s, errors pooled/direct "
              f"{r['errors pooled'][-1]:.0f}/{r['errors direct'][-1]:.0f}; steps "
              + " ".join(f"{s['name']}={(s['duration_s'] or 0) * 1000:.0f}ms" for s in op["steps"]), file=sys.stderr)
        return op

    with Load(pooled_uri):
        time.sleep(2)
        measure("switchover", REC, "active")
        measure("switchback", PRI, "active")
    if no_failover:
        return
    p.pgcrdr("region", "down", "local-europe-west1")
    t_down = time.monotonic()
    n_ok = len(direct.log.ok)
    t_req = put_role(p, PRI, "failed")
    op = wait_done(p, PRI)
    EVENTS.append(("failover (region killed)", t_down, time.monotonic()))
    wait_for("a write through the Service URI", lambda n=n_ok: len(direct.log.ok) > n, timeout=60, interval=0.01)
    first = next(t for t in sorted(direct.log.ok_times) if t > t_req)
    r = rows.setdefault("failover", {})
    r.setdefault("request -> first write (s)", []).append(first - t_req)
    r.setdefault("outage -> first write (s)", []).append(first - t_down)
    r.setdefault("bytes given up", []).append(float((op["data_loss"] or {}).get("bytes") or 0))
    p.pgcrdr("region", "up", "local-europe-west1")
    put_role(p, PRI, "passive")
    restore = wait_done(p, PRI, timeout=600)
    rows.setdefault("failback restore", {}).setdefault("duration (s)", []).append(
        sum(s["duration_s"] or 0 for s in restore["steps"]))
    with Load(pooled_uri):
        time.sleep(2)
        measure("failback takeover", PRI, "active")


if __name__ == "__main__":
    sys.exit(main())
