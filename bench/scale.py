#!/usr/bin/env python3
"""Benchmark: many pairs on one platform: build time, memory per service, region loss.

Starts its own pgcrdr under a scratch home and builds N startup-4 pairs (primaries in
local-europe-west1, recovery copies in local-us-east1), all requested at once. Prints:

- the build time (first request to every copy streaming);
- the memory of each service: the PSS (proportional set size, so PostgreSQL's shared memory is
  counted once, not once per backend) of every process of its cluster (Patroni, PostgreSQL and
  its backends, HAProxy), plus the region's shared processes (agent, etcd, pgBackRest) divided
  by the services of the region;
- region loss: the primaries' region killed, one failover request per pair at once, and each
  pair's time from its request to its first acknowledged write (``tests/region_loss.py``):
  with pairs in parallel, the median should not grow with N.

    .venv/bin/python bench/scale.py --pairs 25
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr.processes import cmdline  # noqa: E402
from pgcrdr.controlplane.services import cluster_id  # noqa: E402
from tests.helpers import RunningPlatform, start_platform, stop_platform  # noqa: E402
from tests.region_loss import EU, PROJECT, US, build_pairs, lose_region_and_fail_over, summary  # noqa: E402


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cwd(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/cwd").resolve())
    except OSError:
        return ""


def memory_by_service(p: RunningPlatform, names: list[str]) -> dict[str, float]:
    """MiB per service: its cluster's processes, plus its share of its region's own processes."""
    s = p.settings()
    pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]
    procs = {pid: (cmdline(pid), _cwd(pid)) for pid in pids}
    out: dict[str, float] = {}
    services = [(n, EU) for n in names] + [(n + "-dr", US) for n in names]
    per_region: dict[str, int] = {}
    for cloud in (EU, US):
        region = s.region(cloud)
        assert region is not None
        marker = str(s.region_dir(region))
        clusters = str(s.region_dir(region) / "clusters")
        shared = [pid for pid, (cmd, cwd) in procs.items()
                  if (marker in cmd or marker in cwd or f"--region {cloud}" in cmd) and clusters not in cmd + cwd]
        per_region[cloud] = sum(pss_kib(pid) for pid in shared)
    count = {EU: len(names), US: len(names)}
    for name, cloud in services:
        region = s.region(cloud)
        assert region is not None
        cdir = str(s.region_dir(region) / "clusters" / cluster_id(PROJECT, name))
        own = sum(pss_kib(pid) for pid, (cmd, cwd) in procs.items() if cdir in cmd or cdir in cwd)
        out[name] = (own + per_region[cloud] / count[cloud]) / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=25)
    ap.add_argument("--port-offset", type=int, default=15000)
    args = ap.parse_args()
    if not 1 <= args.pairs <= 60:
        ap.error("--pairs must be 1 to 60")
    p = start_platform(args.port_offset)
    try:
        t0 = time.monotonic()
        names = build_pairs(p, args.pairs, prefix="bench-sc")
        build_s = time.monotonic() - t0
        time.sleep(5)  # settle: backends of the first writes gone, Patroni's loops idle
        memory = memory_by_service(p, names)
        results = lose_region_and_fail_over(p, names)
    finally:
        stop_platform(p)
    mem = sorted(memory.values())
    s = summary(results)
    print(f"\n{args.pairs} pairs ({2 * args.pairs} services)")
    print(f"{'measure':<44} {'value':>10}")
    print(f"{'build, request to every copy streaming (s)':<44} {build_s:>10.1f}")
    print(f"{'memory per service, median (MiB PSS)':<44} {statistics.median(mem):>10.1f}")
    print(f"{'memory per service, max (MiB PSS)':<44} {mem[-1]:>10.1f}")
    print(f"{'region loss: first write, median (s)':<44} {s['median_s']:>10.3f}")
    print(f"{'region loss: first write, max (s)':<44} {s['max_s']:>10.3f}")
    print(f"{'region loss: acknowledged writes lost':<44} {s['lost']:>10}")
    # where a failover's time goes, when many run at once: each step's median over the pairs
    steps: dict[str, list[float]] = {}
    for r in results:
        for st in (r.op or {}).get("steps", []):
            if st.get("duration_s") is not None:
                steps.setdefault(st["name"], []).append(st["duration_s"])
    for name, took in steps.items():
        label = f"failover step {name}, median / max (s)"
        print(f"{label:<44} {statistics.median(took):>10.3f} / {max(took):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
