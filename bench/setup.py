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

Prints the median of each and their ratio (the goal: the copy within 1.2x of the raw copy), the
same pg_basebackup without ``--no-sync`` (the copy's own pg_basebackup syncs: a standby must be on
disk), what of the copy is fixed (all but its own pg_basebackup), and the copy's time step by step,
read from the logs of the agent, the copy's Patroni and PostgreSQL and the control plane.

    .venv/bin/python bench/setup.py [--runs 3] [--scale 70]
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from tests.helpers import RunningPlatform, dr_status, start_platform, stop_platform, wait_for  # noqa: E402

PROJECT = "pgcrdr"
PRI, REC = "bench-setup", "bench-setup-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# What a recovery copy's time is made of: the moment each step ended, read from the logs of the
# bench's own platform (the agent's, the copy's Patroni and PostgreSQL logs, the control plane's).
# (step, where, what marks its end); the first step starts when the bench runs avn.
STEPS: list[tuple[str, str, str]] = [
    ("request: avn + API + agent PUT", "agent", ": start "),
    ("Patroni process start", "patroni", ""),
    ("Patroni: bootstrap decided", "patroni", "trying to bootstrap a new standby leader"),
    ("pg_basebackup (checkpoint + copy)", "patroni", "replica has been created using basebackup"),
    ("Patroni: copy -> postmaster start", "pg", "starting PostgreSQL"),
    ("PostgreSQL: start -> streaming", "pg", "started streaming WAL from primary"),
    ("Patroni: standby leader", "patroni", "initialized a new cluster"),
    ("agent: cluster ready", "agent", ": ready"),
    ("control plane: setup done", "control", "wait_passive_in_sync done"),
]
POLL_S = 0.1  # how often the bench asks whether the setup is done


def _log_time(line: str) -> float | None:
    """Epoch seconds of a log line: Python's logging (local time, ``,ms``) or PostgreSQL (``.ms UTC``)."""
    try:
        t = dt.datetime.strptime(line[:23].replace(",", "."), "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None
    return t.replace(tzinfo=dt.timezone.utc).timestamp() if line[23:27] == " UTC" else t.timestamp()


def _first(path: Path, marker: str, cluster: str | None, after: float) -> float | None:
    """Time of the first line of ``path`` at or after ``after`` holding ``marker`` (and ``cluster``)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        t = _log_time(line)
        if t is None or t < after - 0.002 or marker not in line or (cluster and cluster not in line):
            continue
        return t
    return None


def copy_steps(p: RunningPlatform, cluster: str, t0: float) -> dict[str, float]:
    """Seconds per step of the copy just made (``t0``: epoch when avn was run); a step whose end
    is not found in the logs is left out (its time goes to the next one found)."""
    region = p.home / "regions" / REC_CLOUD
    node = region / "clusters" / cluster / "nodes" / f"{cluster}-1"
    files = {"agent": (p.home / "run" / f"agent-{REC_CLOUD}.log", cluster),
             "patroni": (node / "patroni.log", None), "pg": (node / "pglog" / "postgresql.log", None),
             "control": (p.home / "run" / "pgcrdr.log", None)}
    out: dict[str, float] = {}
    last = t0
    for name, where, marker in STEPS:
        path, must = files[where]
        t = _first(path, marker, must, last)
        if t is None:
            continue
        out[name] = max(0.0, t - last)
        last = t
    out["_end"] = last
    return out


def recovery_copy(p: RunningPlatform) -> tuple[float, dict[str, float]]:
    t0, m0 = time.time(), time.monotonic()
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    avn_s = time.monotonic() - m0

    def done() -> dict | None:
        d = dr_status(p, PROJECT, REC)
        if d["operation"] is not None:
            return None
        ops = [o for o in d["history"] if o["kind"] == "setup"]
        return ops[-1] if ops else None

    op = wait_for("the setup operation to finish", done, timeout=3600, interval=POLL_S)
    elapsed = time.monotonic() - m0
    assert op["state"] == "done", op
    steps = copy_steps(p, _cluster_of(p), t0)
    steps["bench: poll sees done"] = max(0.0, t0 + elapsed - steps.pop("_end"))
    steps["(avn process, of the request)"] = avn_s
    p.avn("service", "terminate", REC, "--project", PROJECT, "--force")

    def gone() -> bool:
        with p.api() as c:
            return c.get(f"/v1/project/{PROJECT}/service/{REC}").status_code == 404

    wait_for("the copy to be terminated", gone, timeout=300)
    return elapsed, steps


def _cluster_of(p: RunningPlatform) -> str:
    store = open_store(p.settings())
    try:
        svc = store.get_service(PROJECT, REC)
    finally:
        store.close()
    assert svc is not None
    return svc.cluster


def raw_basebackup(p: RunningPlatform, sync: bool = False) -> float:
    """pg_basebackup of the primary through its region's writer endpoint, as the replication user;
    ``sync``: without ``--no-sync`` (pg_basebackup fsyncs every file before it exits)."""
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
                        "-D", str(scratch / "data"), "-X", "stream", "--checkpoint=fast"]
                       + ([] if sync else ["--no-sync"]),
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
    synced: list[float] = []
    steps: list[dict[str, float]] = []
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
            synced.append(raw_basebackup(p, sync=True))
            copy, st = recovery_copy(p)
            copies.append(copy)
            steps.append(st)
            print(f"run {i + 1}: pg_basebackup {raws[-1]:.1f} s (synced {synced[-1]:.1f} s), "
                  f"recovery copy {copy:.1f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()), flush=True)
    finally:
        stop_platform(p)
    raw, copy = statistics.median(raws), statistics.median(copies)
    print(f"\ndatabase {size / 2**20:.0f} MiB; median of {args.runs} runs")
    print(f"{'what':<40} {'median s':>9} {'ratio':>7}")
    print(f"{'pg_basebackup --no-sync (raw)':<40} {raw:>9.2f} {1.0:>7.2f}")
    print(f"{'pg_basebackup, synced':<40} {statistics.median(synced):>9.2f} {statistics.median(synced) / raw:>7.2f}")
    print(f"{'recovery copy (request->passive)':<40} {copy:>9.2f} {copy / raw:>7.2f}")
    bb = "pg_basebackup (checkpoint + copy)"
    fixed = statistics.median(c - st.get(bb, 0.0) for c, st in zip(copies, steps, strict=True))
    print(f"{'  of which fixed (all but its copy)':<40} {fixed:>9.2f} {fixed / raw:>7.2f}")
    print("\nrecovery copy, step by step (median of each; a step ends where the next begins):")
    names = [n for n, _, _ in STEPS] + ["bench: poll sees done"]
    for name in names + ["(avn process, of the request)"]:
        vals = [st[name] for st in steps if name in st]
        if vals:
            print(f"  {name:<40} {statistics.median(vals):>7.2f} s  ({min(vals):.2f}-{max(vals):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
