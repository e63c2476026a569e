#!/usr/bin/env python3
"""Benchmark: write pause of CRDR transitions under load, through the pooled and the direct URI.

Starts its own pgcrdr (control plane + two local regions, real PostgreSQL) under a scratch home,
creates a primary and its recovery copy, runs pgbench through the pooled Service URI as
background load, and for each run performs: switchover, switchback, failover (primary region
killed), failback restore and failback takeover. Two acknowledged-write loggers (one per URI)
measure the longest gap between acknowledged writes around each transition, count client
errors, and check at the end that no acknowledged write was lost.

    .venv/bin/python bench/transitions.py [--runs 5] [--no-failover]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-failover", action="store_true", help="only planned moves")
    ap.add_argument("--port-offset", type=int, default=15000)
    args = ap.parse_args()

    p = start_platform(args.port_offset)
    rows: dict[str, dict[str, list[float]]] = {}
    lost_total = 0
    pgbench = None
    try:
        with p.api() as c:
            c.post(f"/v1/project/{PROJECT}/service", json={
                "service_name": PRI, "service_type": "pg", "plan": "startup-4", "cloud": "local-europe-west1"
            }).raise_for_status()
        wait_for("primary RUNNING", lambda: p.service(PROJECT, PRI)["state"] == "RUNNING", timeout=120)
        svc = p.service(PROJECT, PRI)
        direct_uri, pooled_uri = svc["service_uri"], svc["connection_info"]["pgbouncer"][0]
        with psycopg.connect(direct_uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
        subprocess.run(["pgbench", "-i", "-s", "5", "-q", direct_uri], check=True, capture_output=True)
        with p.api() as c:
            c.post(f"/v1/project/{PROJECT}/service", json={
                "service_name": REC, "service_type": "pg", "plan": "startup-4", "cloud": "local-us-east1",
                "service_integrations": [{"integration_type": "disaster_recovery", "source_service": PRI}],
            }).raise_for_status()
        wait_for("recovery RUNNING", lambda: p.service(PROJECT, REC)["state"] == "RUNNING", timeout=240)
        wait_done(p, PRI)
        pgbench = subprocess.Popen(["pgbench", "-c", "4", "-j", "2", "-T", "3600", "-M", "simple", "-n",
                                    pooled_uri], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        direct = Writer(direct_uri, interval=0.005)
        pooled = Writer(pooled_uri, interval=0.005, prepare_threshold=None)
        direct.start()
        pooled.start()
        time.sleep(2)

        def measure(kind: str, name: str, role: str, settle: float = 1.0) -> dict:
            e_d, e_p = errors(direct), errors(pooled)
            t0 = put_role(p, name, role)
            op = wait_done(p, name)
            t1 = time.monotonic()
            time.sleep(settle)
            r = rows.setdefault(kind, {})
            r.setdefault("pause pooled (s)", []).append(gap_around(pooled, t0, t1))
            r.setdefault("pause direct (s)", []).append(gap_around(direct, t0, t1))
            r.setdefault("errors pooled", []).append(errors(pooled) - e_p)
            r.setdefault("errors direct", []).append(errors(direct) - e_d)
            r.setdefault("operation write_pause_s", []).append(op["write_pause_s"] or 0.0)
            print(f"  {kind}: pooled gap {r['pause pooled (s)'][-1]:.3f}s, direct gap "
                  f"{r['pause direct (s)'][-1]:.3f}s, errors pooled/direct "
                  f"{r['errors pooled'][-1]:.0f}/{r['errors direct'][-1]:.0f}", file=sys.stderr)
            return op

        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", file=sys.stderr)
            measure("switchover", REC, "active")
            measure("switchback", PRI, "active")
            if args.no_failover:
                continue
            p.pgcrdr("region", "down", "local-europe-west1")
            t_down = time.monotonic()
            n_ok = len(direct.log.ok)
            t_req = put_role(p, PRI, "failed")
            op = wait_done(p, PRI)
            wait_for("a write through the Service URI", lambda n=n_ok: len(direct.log.ok) > n, timeout=60,
                     interval=0.01)
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
            measure("failback takeover", PRI, "active")
    finally:
        if pgbench is not None:
            pgbench.terminate()
            pgbench.wait(timeout=30)
        try:
            d_log, p_log = direct.stop(), pooled.stop()  # type: ignore[possibly-undefined]
            stored = set()
            with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10) as conn:
                stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
            lost_total = len((set(d_log.ok) | set(p_log.ok)) - stored)
        except (NameError, psycopg.Error, httpx.HTTPError) as exc:
            print(f"could not check lost writes: {exc}", file=sys.stderr)
            lost_total = -1
        stop_platform(p)

    print()
    print(f"{'transition':<20}{'measure':<30}{'median':>10}{'min':>10}{'max':>10}{'runs':>6}")
    for kind, measures in rows.items():
        for m, vals in measures.items():
            print(f"{kind:<20}{m:<30}{statistics.median(vals):>10.3f}{min(vals):>10.3f}{max(vals):>10.3f}"
                  f"{len(vals):>6}")
    print(f"{'all':<20}{'acknowledged writes lost':<30}{lost_total:>10}")
    print("(failover loses at most the un-replicated tail the operation reports as bytes given up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
