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
  with pairs in parallel, the median should not grow with N;
- where the CPU goes, by kind of process (Patroni, PostgreSQL, agents, HAProxy, etcd, ...): on
  the idle platform (and per cluster), and during the failovers; on a machine of few cores this
  says why the region-loss time grows with N.

    .venv/bin/python bench/scale.py --pairs 25
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
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


KINDS = ("patroni", "pgbackrest", "haproxy", "etcd", "pgbouncer")


def _kind(pid: int, cmd: str) -> str:
    """What a process is, for the CPU table: a platform part, PostgreSQL, this bench, or other."""
    if pid == os.getpid():
        return "bench (writers)"
    for k in KINDS:
        if k in cmd:
            return k
    if cmd.startswith("postgres") or "bin/postgres" in cmd:
        return "postgres"
    if "-m pgcrdr.agent" in cmd or " -m pgcrdr agent" in cmd:
        return "agent"
    if "-m pgcrdr" in cmd or "bin/pgcrdr" in cmd:
        return "control plane"
    return "other"


def cpu_snapshot() -> dict[int, tuple[int, str]]:
    """pid -> (CPU ticks used so far, kind) for every process."""
    out: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = (int(f[11]) + int(f[12]), _kind(int(d.name), cmd))  # utime + stime
    return out


def cores_by_kind(a: dict[int, tuple[int, str]], b: dict[int, tuple[int, str]], seconds: float) -> dict[str, float]:
    """Cores each kind of process kept busy between two snapshots (processes born in between
    count from zero; those that died in between are not seen)."""
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid, (ticks, kind) in b.items():
        used = ticks - a[pid][0] if pid in a and a[pid][1] == kind else ticks
        out[kind] = out.get(kind, 0.0) + used / hz / seconds
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class CpuSampler:
    """A snapshot every ``every`` seconds in a thread, to read the CPU of any window afterwards."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.samples: list[tuple[float, dict[int, tuple[int, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), cpu_snapshot()))
            self._stop.wait(self.every)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> tuple[float, dict[str, float]]:
        """(seconds, cores by kind) between the last sample at or before ``start`` and the
        first at or after ``end``."""
        before = [s for s in self.samples if s[0] <= start] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= end] or self.samples[-1:]
        (t0, a), (t1, b) = before[-1], after[0]
        return t1 - t0, cores_by_kind(a, b, max(t1 - t0, 1e-3))


IDLE_S = 10.0


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
        a, t = cpu_snapshot(), time.monotonic()
        time.sleep(IDLE_S)
        idle = cores_by_kind(a, cpu_snapshot(), time.monotonic() - t)
        with CpuSampler() as sampler:
            results = lose_region_and_fail_over(p, names)
        first = [r.requested_at + r.first_write_s for r in results if r.first_write_s is not None]
        window, busy = sampler.window(min(r.requested_at for r in results), max(first))
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
    # where the CPU goes: what the idle platform already takes, and during the failovers (from the
    # first request to the last pair's first write); 2 cores here
    clusters = 2 * args.pairs
    print(f"\nCPU (cores busy) by kind of process, of {os.cpu_count()}")
    print(f"{'kind':<20} {'idle':>8} {'per cluster':>12} {'failovers':>10}")
    for kind in dict.fromkeys([*idle, *busy]):
        i, b = idle.get(kind, 0.0), busy.get(kind, 0.0)
        if i >= 0.005 or b >= 0.005:
            print(f"{kind:<20} {i:>8.2f} {i / clusters:>12.4f} {b:>10.2f}")
    print(f"{'all':<20} {sum(idle.values()):>8.2f} {sum(idle.values()) / clusters:>12.4f} "
          f"{sum(busy.values()):>10.2f}")
    print(f"(idle: {IDLE_S:.0f} s after the build settled; failovers: the {window:.1f} s from the first request "
          "to the last pair's first write)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
