#!/usr/bin/env python3
"""Benchmark: time from `service create` to the first acknowledged write, and GET-service latency.

Starts its own pgcrdr (control plane + two local regions, real PostgreSQL) under a scratch home,
so it never touches a running instance, and stops it at the end.

    .venv/bin/python bench/create_and_get.py [--runs 3] [--clients 20] [--requests 50]

Prints a table of medians (and min/max) per plan, then p50/p99 of GET /service under concurrency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import start_platform, stop_platform  # noqa: E402

PROJECT = "pgcrdr"


def time_to_first_write(api: httpx.Client, name: str, plan: str, cloud: str, timeout: float = 300
                        ) -> tuple[float, float]:
    """Seconds from POST to the first acknowledged write, and to state RUNNING (every node in sync)."""
    body = {"service_name": name, "service_type": "pg", "plan": plan, "cloud": cloud, "user_config": {}}
    t0 = time.monotonic()
    r = api.post(f"/v1/project/{PROJECT}/service", json=body)
    r.raise_for_status()
    uri = r.json()["service"]["service_uri"]
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(uri, connect_timeout=2, autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS bench (x int)")
                conn.execute("INSERT INTO bench VALUES (1)")
            break
        except psycopg.Error:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"{name}: no successful write within {timeout}s")
    first_write = time.monotonic() - t0
    while time.monotonic() < deadline:
        if api.get(f"/v1/project/{PROJECT}/service/{name}").json()["service"]["state"] == "RUNNING":
            return first_write, time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"{name}: not RUNNING within {timeout}s")


def terminate(api: httpx.Client, name: str) -> None:
    api.delete(f"/v1/project/{PROJECT}/service/{name}").raise_for_status()
    deadline = time.monotonic() + 120
    # wait until the region really removed it, so runs do not overlap
    while time.monotonic() < deadline:
        if api.get(f"/v1/project/{PROJECT}/service/{name}").status_code == 404:
            return
        time.sleep(0.5)


def get_latencies(api_url: str, token: str, name: str, clients: int, requests: int) -> list[float]:
    lat: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=api_url, headers={"Authorization": f"aivenv1 {token}"}, timeout=30) as c:
            for _ in range(requests):
                t = time.perf_counter()
                c.get(f"/v1/project/{PROJECT}/service/{name}").raise_for_status()
                with lock:
                    lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=50, help="GETs per client")
    ap.add_argument("--port-offset", type=int, default=12000)
    args = ap.parse_args()

    p = start_platform(args.port_offset)
    try:
        api = p.api()
        results: dict[str, list[float]] = {}
        running: dict[str, list[float]] = {}
        for plan in ("startup-4", "business-4"):
            for i in range(args.runs):
                name = f"bench-{plan.split('-')[0]}-{i}"
                secs, ready = time_to_first_write(api, name, plan, "local-europe-west1")
                results.setdefault(plan, []).append(secs)
                running.setdefault(plan, []).append(ready)
                print(f"  {plan} run {i + 1}: first write after {secs:.2f}s, RUNNING after {ready:.2f}s",
                      file=sys.stderr)
                terminate(api, name)
        name = "bench-get"
        time_to_first_write(api, name, "startup-4", "local-europe-west1")
        lat = get_latencies(p.api_url, p.token, name, args.clients, args.requests)
        terminate(api, name)
    finally:
        stop_platform(p)

    print()
    print(f"{'measure':<44}{'median':>10}{'min':>10}{'max':>10}{'runs':>6}")
    for plan, vals in results.items():
        nodes = {"startup-4": 1, "business-4": 2}[plan]
        print(f"{f'create -> first write, {plan} ({nodes} node)':<44}"
              f"{statistics.median(vals):>9.2f}s{min(vals):>9.2f}s{max(vals):>9.2f}s{len(vals):>6}")
    for plan, vals in running.items():
        print(f"{f'create -> state RUNNING, {plan}':<44}"
              f"{statistics.median(vals):>9.2f}s{min(vals):>9.2f}s{max(vals):>9.2f}s{len(vals):>6}")
    if len(results) == 2:
        ratio = statistics.median(results["business-4"]) / statistics.median(results["startup-4"])
        print(f"{'ratio 2-node / 1-node (median)':<44}{ratio:>9.2f}x")
    print(f"{f'GET service, {args.clients} clients: p50':<44}{pct(lat, 0.5) * 1000:>8.1f}ms")
    print(f"{f'GET service, {args.clients} clients: p99':<44}{pct(lat, 0.99) * 1000:>8.1f}ms")
    print(f"{'GET service requests':<44}{len(lat):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
