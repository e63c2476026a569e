#!/usr/bin/env python3
"""Benchmark: what a failback restore costs, per source, after a failover.

Starts its own pgcrdr (control plane + two local regions, real PostgreSQL and pgBackRest) under a
scratch home, creates a primary with a pgbench database (scale 70 is about 1 GB) and its recovery
copy in the other region. Each run: the primary's region dies, the pair fails over, a share of
the database is changed on the recovery service (a contiguous range of pgbench_accounts, so that
"1%" is 1% of the table's pages), the region returns, and the failed primary is rebuilt by one
source, forced with the ``failback_source`` extension:

- ``rewind``: pg_rewind of the old data directory (kept);
- ``restore``: the old data directory is deleted (a lost disk); restore from the primary region's
  own pgBackRest repository, then stream the rest from the active service;
- ``basebackup``: a full copy from the active service;
- ``auto``: what pgcrdr chooses by itself when the region comes back with its disk (the old data
  directory kept): the source with the fewest estimated cross-region bytes.

Then the primary is promoted back (failback takeover) and backed up on its new timeline before
the next run. Prints, per change and source, the median time of the restore (request to RUNNING
passive) and the median bytes moved across regions, and their ratio to a full copy and to the WAL
the active service wrote from the fork until the restored side had caught up (the least a failback
must bring over; more than the change's own WAL, also printed). Before each outage the primary
writes WAL until its end lies ``--fork-offset-mib`` (8) into a segment, as for a region lost at a
random moment.

With ``--bandwidth RATE`` (e.g. 200mbit; root) it runs on a lab of hosts instead (pgcrdr.lab:
the control plane and each region on its own network namespace, the agents over TLS), with the
primary region's link capped by ``tc tbf`` once the pair is set up: what crosses regions then
costs time as it would between data centres, and the time ratio to a full copy is printed too.

    .venv/bin/python bench/failback.py [--runs 3] [--scale 70] [--changes 1,10] [--bandwidth 200mbit]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr.agentapi.client import AgentClient, AgentError  # noqa: E402
from pgcrdr.agentapi.lsn import parse_lsn  # noqa: E402
from pgcrdr.controlplane.services import cluster_id  # noqa: E402
from pgcrdr.lab import cap_bandwidth, link_bytes  # noqa: E402
from tests.helpers import (  # noqa: E402
    RunningPlatform,
    dr_status,
    start_platform,
    stop_platform,
    wait_backup_on_current_timeline,
    wait_for,
    wait_operation,
)
from tests.lab_helpers import LabPlatform, lab_platform  # noqa: E402

PROJECT = "pgcrdr"
PRI, REC = "bench-fb", "bench-fb-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
SOURCES = ("rewind", "restore", "basebackup", "auto")


def api_put(p: RunningPlatform, name: str, body: dict) -> None:
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{name}", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"PUT {name} {body}: {r.status_code} {r.text}")


def done(op: dict) -> dict:
    if op["state"] != "done":
        raise RuntimeError(f"{op['kind']} ended {op['state']}: {op['message']}")
    return op


def agent(p: RunningPlatform, cloud: str) -> AgentClient:
    s = p.settings()
    region = s.region(cloud)
    assert region is not None
    return AgentClient(s.agent_url(region), p.agent_token(), timeout=30, verify=s.agent_verify)


def region_down(p: RunningPlatform, cloud: str) -> None:
    """Every process of the region killed at once (agent included), its disk kept."""
    if isinstance(p, LabPlatform):
        a = agent(p, cloud)
        try:
            a.region_outage()
        except AgentError:
            pass  # the agent dies with its region: the answer may not come back
        finally:
            a.close()
    else:
        p.pgcrdr("region", "down", cloud)


def region_up(p: RunningPlatform, cloud: str) -> None:
    if isinstance(p, LabPlatform):
        assert p.deployment is not None
        host = next(h for h, c in p.deployment.region_hosts() if c == cloud)
        p.deployment.start_agent(host)
        p.deployment.wait_ready(120)
    else:
        p.pgcrdr("region", "up", cloud)


def region_dir(p: RunningPlatform, cloud: str) -> Path:
    s = p.deployment.settings("r0") if isinstance(p, LabPlatform) and p.deployment else p.settings()
    region = s.region(cloud)
    assert region is not None
    return s.region_dir(region)


def place_fork(p: RunningPlatform, offset_mib: float) -> None:
    """Write WAL on the primary until its end lies ``offset_mib`` into a segment, and wait until
    the recovery copy has received it: the fork is then there. Left alone, the fork lies right
    after the WAL switch that ended the backup this bench waits for, where streaming from the
    start of the fork's segment costs nothing; a region lost at a random moment forks half-way
    through a segment on average."""
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], autocommit=True, connect_timeout=10) as conn:
        seg = int(conn.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[0])
        lsn = parse_lsn(str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]))
        target = lsn - lsn % seg + int(offset_mib * 2**20)
        if target <= lsn + 2**16:
            target += seg
        # a non-transactional logical message: WAL of the wanted size, no table touched
        conn.execute("SELECT pg_logical_emit_message(false, 'bench-fork', repeat('x', %s))",
                     (max(0, target - lsn - 100),))
        end = parse_lsn(str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]))
    a = agent(p, REC_CLOUD)
    try:
        def received() -> bool:
            st = a.get_cluster(cluster_id(PROJECT, REC))
            got = st.lsn.receive_lsn if st is not None and st.lsn is not None else None
            return got is not None and parse_lsn(got) >= end

        wait_for("the recovery copy to receive the WAL before the fork", received, timeout=300, interval=0.2)
    finally:
        a.close()


def one_run(p: RunningPlatform, source: str, change_pct: float, accounts: int, fork_offset_mib: float) -> dict:
    # the restore source needs a backup of the writer's timeline taken before the fork
    wait_backup_on_current_timeline(p, PROJECT, PRI, PRI_CLOUD, timeout=1800, interval=2)
    if fork_offset_mib > 0:
        place_fork(p, fork_offset_mib)
    region_down(p, PRI_CLOUD)
    api_put(p, PRI, {"disaster_recovery_role": "failed"})
    failover = done(wait_operation(p, PROJECT, PRI, "failover", timeout=300))
    n = int(accounts * change_pct / 100)
    with psycopg.connect(p.service(PROJECT, REC)["service_uri"], autocommit=True, connect_timeout=10) as conn:
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= %s", (n,))
        # the WAL of the change itself
        now_lsn = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
    fork_lsn = parse_lsn(failover["details"]["switch_lsn"])
    change_wal = parse_lsn(now_lsn) - fork_lsn
    region_up(p, PRI_CLOUD)
    if source not in ("rewind", "auto"):
        nodes = region_dir(p, PRI_CLOUD) / "clusters" / cluster_id(PROJECT, PRI) / "nodes"
        for d in nodes.glob("*/data"):
            shutil.rmtree(d)
    link0 = link_bytes(p.lab, "r0") if isinstance(p, LabPlatform) else None
    t0 = time.monotonic()
    body = {"disaster_recovery_role": "passive"}
    if source != "auto":
        body["failback_source"] = source
    api_put(p, PRI, body)

    def restored() -> dict | None:
        d = dr_status(p, PROJECT, PRI)
        if d["operation"] is not None:
            return None
        ops = [o for o in d["history"] if o["kind"] == "failback_restore"]
        return ops[-1] if ops else None

    op = done(wait_for("the failback restore", restored, timeout=3600, interval=0.5))
    elapsed = time.monotonic() - t0
    # The WAL the active service wrote from the fork until the restored side had caught up: what
    # a failback has to bring over at least. More than the change's own WAL: the recovery
    # region's first backup after the failover, autovacuum, and every WAL switch (the backup's
    # end, archive_timeout) whose segment's rest streams as it is.
    with psycopg.connect(p.service(PROJECT, REC)["service_uri"], autocommit=True, connect_timeout=10) as conn:
        end_lsn = parse_lsn(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))
    caught_up = op["details"]["restore"].get("caught_up_lsn")
    wal_since_fork = (parse_lsn(caught_up) if caught_up else end_lsn) - fork_lsn
    # what crossed the primary region's link (both ways, every process): the record's count checked
    link = sum(link_bytes(p.lab, "r0")) - sum(link0) if isinstance(p, LabPlatform) and link0 else None
    rec = op["details"]["restore"]
    api_put(p, PRI, {"disaster_recovery_role": "active"})
    done(wait_operation(p, PROJECT, PRI, "failback_promote", timeout=300))
    if source != "auto" and op["details"]["restore"].get("source") != source:
        raise RuntimeError(f"asked for {source}, rebuilt by {op['details']['restore'].get('source')}")
    steps = {st["name"]: st.get("duration_s") or 0.0 for st in op["steps"]}
    tried = {a["source"]: a.get("duration_s") or 0.0 for a in rec.get("attempts", [])}
    return {"time_s": elapsed, "cross_bytes": rec.get("cross_region_bytes") or 0, "wal_since_fork": wal_since_fork,
            "change_wal": change_wal, "wal_at_end": end_lsn - fork_lsn,
            "local_bytes": rec.get("local_bytes") or 0, "source": rec["source"], "link_bytes": link,
            "steps": steps, "tried": tried, "reason": rec.get("reason") or ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--changes", default="1,10", help="percentages of pgbench_accounts changed after failover")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--port-offset", type=int, default=18000)
    ap.add_argument("--fork-offset-mib", type=float, default=8.0,
                    help="place the fork this far into a WAL segment (0: where the bench leaves it, right "
                         "after a WAL switch)")
    ap.add_argument("--bandwidth", help="run on a lab of hosts with the primary region's link capped at RATE "
                                        "(tc tbf, e.g. 200mbit; needs root)")
    args = ap.parse_args()
    changes = [float(x) for x in args.changes.split(",")]
    sources = [s for s in args.sources.split(",") if s]
    os.environ.setdefault("PGCRDR_BACKUP_INCR_INTERVAL", "86400")  # only the full backups this bench needs

    with contextlib.ExitStack() as stack:
        if args.bandwidth:
            p: RunningPlatform = stack.enter_context(lab_platform([PRI_CLOUD, REC_CLOUD], "bfb", 171))
        else:
            p = start_platform(args.port_offset)
            stack.callback(stop_platform, p)
        size, results = run_all(p, args, changes, sources)
    print_table(args, size, changes, sources, results)
    return 0


def run_all(p: RunningPlatform, args: argparse.Namespace, changes: list[float],
            sources: list[str]) -> tuple[int, dict[tuple[float, str], list[dict]]]:
    results: dict[tuple[float, str], list[dict]] = {}
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", PRI_CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "300")
    uri = p.service(PROJECT, PRI)["service_uri"]
    t0 = time.monotonic()
    subprocess.run([PGBENCH, "-i", "-q", "-s", str(args.scale), uri],
                   check=True, capture_output=True, text=True)
    with psycopg.connect(uri, connect_timeout=10) as conn:
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        accounts = int(conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0])
    print(f"pgbench scale {args.scale}: {size / 2**20:.0f} MiB, {accounts} accounts, "
          f"loaded in {time.monotonic() - t0:.0f} s", flush=True)
    a = agent(p, PRI_CLOUD)
    a.request_backup(cluster_id(PROJECT, PRI), "full")  # a backup that holds the loaded data
    a.close()
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "1800")
    time.sleep(5)
    if args.bandwidth:
        assert isinstance(p, LabPlatform)
        cap_bandwidth(p.lab, "r0", args.bandwidth)
        print(f"the primary region's link is capped at {args.bandwidth}", flush=True)
    for change in changes:
        for source in sources:
            for i in range(args.runs):
                r = one_run(p, source, change, accounts, args.fork_offset_mib)
                results.setdefault((change, source), []).append(r)
                print(f"change {change:g}% source {source} run {i + 1}: {r['time_s']:.1f} s, "
                      f"{r['cross_bytes'] / 2**20:.1f} MiB across regions "
                      f"(WAL since the fork {r['wal_since_fork'] / 2**20:.1f} MiB until caught up, "
                      f"{r['wal_at_end'] / 2**20:.1f} MiB until done, the change's own {r['change_wal'] / 2**20:.1f} "
                      "MiB), "
                      f"{r['local_bytes'] / 2**20:.1f} MiB from the local repository"
                      + (f", {r['link_bytes'] / 2**20:.1f} MiB on the link" if r["link_bytes"] is not None else "")
                      + "; steps: " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
                      + "; tried: " + ", ".join(f"{k} {v:.1f}" for k, v in r["tried"].items())
                      + f"; {r['reason']}", flush=True)
    return size, results


def print_table(args: argparse.Namespace, size: int, changes: list[float], sources: list[str],
                results: dict[tuple[float, str], list[dict]]) -> None:
    print()
    link = f"; cross-region link capped at {args.bandwidth} (lab)" if args.bandwidth else ""
    print(f"database {size / 2**20:.0f} MiB (pgbench scale {args.scale}); median of {args.runs} runs{link}")
    print(f"{'change':>7} {'source':>13} {'time s':>8} {'vs full copy':>13} {'cross-region MiB':>17} "
          f"{'vs full copy':>13} {'vs WAL since fork':>18} {'local MiB':>10}"
          + (f" {'link MiB':>9}" if args.bandwidth else "") + f" {'WAL MiB':>8} {'change MiB':>11}")
    for change in changes:
        full = results.get((change, "basebackup"))
        full_bytes = statistics.median(r["cross_bytes"] for r in full) if full else None
        full_time = statistics.median(r["time_s"] for r in full) if full else None
        for source in sources:
            rs = results.get((change, source), [])
            if not rs:
                continue
            t = statistics.median(r["time_s"] for r in rs)
            b = statistics.median(r["cross_bytes"] for r in rs)
            loc = statistics.median(r["local_bytes"] for r in rs)
            ratio = f"{100 * b / full_bytes:.1f}%" if full_bytes else "-"
            t_ratio = f"{t / full_time:.2f}x" if full_time else "-"
            wal = statistics.median(r["wal_since_fork"] for r in rs)
            w_ratio = f"{b / wal:.2f}x" if wal > 0 else "-"
            label = source if source != "auto" else "auto:" + "/".join(sorted({r["source"] for r in rs}))
            links = [r["link_bytes"] for r in rs if r["link_bytes"] is not None]
            on_link = f" {statistics.median(links) / 2**20:>9.1f}" if links else ""
            print(f"{change:>6g}% {label:>13} {t:>8.1f} {t_ratio:>13} {b / 2**20:>17.1f} {ratio:>13} "
                  f"{w_ratio:>18} {loc / 2**20:>10.1f}{on_link} {wal / 2**20:>8.1f} "
                  f"{statistics.median(r['change_wal'] for r in rs) / 2**20:>11.1f}")


if __name__ == "__main__":
    sys.exit(main())
