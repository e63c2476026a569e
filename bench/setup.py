#!/usr/bin/env python3
"""Benchmark: what making a recovery copy costs, against a raw pg_basebackup of the same database.

Starts its own pgcrdr (control plane + two local regions) under a scratch home, creates a
startup-4 primary and loads it with pgbench (scale 70 is about 1 GB). Then, each run:

- ``recovery copy``: ``avn service create REC ... --disaster-recovery-copy-for PRI`` in the other
  region, from the request to the copy RUNNING as the passive side (its setup operation done);
  then the copy is terminated again;
- ``pg_basebackup``: a plain ``pg_basebackup -X stream --checkpoint=fast`` of the same primary,
  through the same path the copy takes (the primary region's writer endpoint, TLS), into a scratch
  directory on the same disk.

Prints the median of each and their ratio (the goal: the copy within 1.2x of the raw copy).

    .venv/bin/python bench/setup.py [--runs 3] [--scale 70]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr.controlplane.store import open_store  # noqa: E402
from tests.helpers import RunningPlatform, start_platform, stop_platform, wait_done, wait_for  # noqa: E402

PROJECT = "pgcrdr"
PRI, REC = "bench-setup", "bench-setup-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def recovery_copy(p: RunningPlatform) -> float:
    t0 = time.monotonic()
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    wait_done(p, PROJECT, REC, "setup", timeout=3600)
    elapsed = time.monotonic() - t0
    p.avn("service", "terminate", REC, "--project", PROJECT, "--force")

    def gone() -> bool:
        with p.api() as c:
            return c.get(f"/v1/project/{PROJECT}/service/{REC}").status_code == 404

    wait_for("the copy to be terminated", gone, timeout=300)
    return elapsed


def raw_basebackup(p: RunningPlatform) -> float:
    """pg_basebackup of the primary through its region's writer endpoint, as the replication user."""
    store = open_store(p.settings())
    try:
        svc = store.get_service(PROJECT, PRI)
    finally:
        store.close()
    assert svc is not None and svc.status is not None
    ep = svc.status.primary
    scratch = Path(tempfile.mkdtemp(prefix="pgcrdr-bench-bb-", dir="/tmp"))
    try:
        env = {**os.environ, "PGPASSWORD": svc.replication_password, "PGSSLMODE": "require"}
        t0 = time.monotonic()
        subprocess.run([str(PG_BIN / "pg_basebackup"), "-h", ep.host, "-p", str(ep.port), "-U", "replicator",
                        "-D", str(scratch / "data"), "-X", "stream", "--checkpoint=fast", "--no-sync"],
                       env=env, check=True, capture_output=True, text=True, timeout=3600)
        return time.monotonic() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--port-offset", type=int, default=18000)
    args = ap.parse_args()
    p = start_platform(args.port_offset)
    copies: list[float] = []
    raws: list[float] = []
    try:
        p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", PRI_CLOUD,
              "--project", PROJECT)
        p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "300")
        uri = p.service(PROJECT, PRI)["service_uri"]
        subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), uri], check=True,
                       capture_output=True, text=True)
        with psycopg.connect(uri, connect_timeout=10) as conn:
            size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        print(f"pgbench scale {args.scale}: {size / 2**20:.0f} MiB", flush=True)
        for i in range(args.runs):  # alternated, so that drift on a shared machine hits both
            raws.append(raw_basebackup(p))
            copies.append(recovery_copy(p))
            print(f"run {i + 1}: pg_basebackup {raws[-1]:.1f} s, recovery copy {copies[-1]:.1f} s", flush=True)
    finally:
        stop_platform(p)
    raw, copy = statistics.median(raws), statistics.median(copies)
    print(f"\ndatabase {size / 2**20:.0f} MiB; median of {args.runs} runs")
    print(f"{'what':<32} {'median s':>9} {'ratio':>7}")
    print(f"{'pg_basebackup (raw)':<32} {raw:>9.1f} {1.0:>7.2f}")
    print(f"{'recovery copy (request->passive)':<32} {copy:>9.1f} {copy / raw:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
