#!/usr/bin/env python3
"""Benchmark: the control-plane leader SIGKILLed, until the control plane leads again.

Runs on a lab of hosts (root; pgcrdr.lab): a control-plane replica on each region host and on
the witness host, a global etcd of three members (r0, r1, w), each region's agent. Each run
SIGKILLs the replica that leads and measures, from the kill:

- **new leader**: until a surviving replica's API names another live replica as its leader
  (``X-Pgcrdr-Leader``): from then on operations are carried out again (the reconciler and the
  operations run on the leader only);
- **API write**: until a surviving replica's API has answered a write (a new access token): the API of
  the survivors never depended on the leader, so this is the store's answer time.

The killed replica is started again before the next run. Prints each run and the medians.

    .venv/bin/python bench/control_plane_failover.py [--runs 5] [--ttl 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr.api.replica import LEADER_HEADER  # noqa: E402
from tests.helpers import wait_for  # noqa: E402
from tests.lab_helpers import LabPlatform, lab_platform  # noqa: E402

REPLICAS = ("r0", "r1", "w")


def leader_at(url: str) -> str | None:
    try:
        return httpx.get(url + "/v1/clouds", timeout=1).headers.get(LEADER_HEADER) or None
    except httpx.HTTPError:
        return None


def one_run(p: LabPlatform) -> tuple[str, str, float, float]:
    d = p.deployment
    assert d is not None
    urls = {h: d.replica_settings(h).api_url for h in REPLICAS}
    names = {p.lab.host(h).netns: h for h in REPLICAS}
    leader = names[wait_for("a leader", lambda: leader_at(urls["r0"]), timeout=30, interval=0.05)]
    survivor = next(h for h in REPLICAS if h != leader)
    api = httpx.Client(base_url=urls[survivor], headers={"Authorization": f"aivenv1 {p.token}"}, timeout=10)
    pid = d.replica_pid(leader)
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    written = None
    while written is None:
        r = api.post("/v1/access_token", json={"description": "control-plane failover bench"})
        if r.status_code == 200:
            written = time.monotonic() - killed
    api.close()

    def new_leader() -> str | None:
        seen = leader_at(urls[survivor])
        return seen if seen and names.get(seen) not in (None, leader) else None

    now_leading = wait_for("a new leader", new_leader, timeout=60, interval=0.02)
    elected = time.monotonic() - killed
    wait_for("the killed replica's pid file to clear", lambda: d.replica_pid(leader) is None, timeout=10)
    d.start_replica(leader)
    wait_for(f"the replica on {leader} to answer again", lambda: leader_at(urls[leader]), timeout=60)
    return leader, names[now_leading], elected, written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ttl", type=int, default=5, help="PGCRDR_LEADER_TTL of the replicas (seconds)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces)")
    env = {h: {"PGCRDR_LEADER_TTL": str(args.ttl)} for h in REPLICAS}
    rows = []
    with lab_platform(["bench-a", "bench-b"], lab_id=f"rb{os.getpid() % 1000}", subnet=190 + os.getpid() % 10,
                      replicas=REPLICAS, store_hosts=("r0", "r1", "w"), replica_env=env) as p:
        for _ in range(args.runs):
            rows.append(one_run(p))
    table = Table(title=f"control-plane leader SIGKILLed (lease {args.ttl} s; 3 replicas, 3 etcd members)")
    for col in ("run", "killed", "new leader", "s to a new leader", "s to an API write at a survivor"):
        table.add_column(col)
    for i, (killed, new, elected, written) in enumerate(rows, 1):
        table.add_row(str(i), killed, new, f"{elected:.2f}", f"{written:.3f}")
    table.add_row("median", "", "", f"{statistics.median(r[2] for r in rows):.2f}",
                  f"{statistics.median(r[3] for r in rows):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
