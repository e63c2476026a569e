#!/usr/bin/env python3
"""Benchmark: losing the writer node of a 2-node (business-4-like) cluster.

Starts one region agent (real etcd, Patroni, PostgreSQL 15, HAProxy) in a scratch home, as the
component tests do (tests/component/conftest.py), creates a 2-node cluster, and for each run:
writes acknowledged rows in a loop through the writer endpoint, SIGKILLs the writer node
(Patroni and the postmaster, the agent's kill drill), and measures the acknowledged writes lost
and the time until writes resume through the same endpoint. The killed node is restarted by the
agent (``restart_after``) and the next run starts once the cluster is ready again (for
synchronous replication: once Patroni has recorded the synchronous standby).

    .venv/bin/python bench/node_loss.py [--runs 10] [--mode sync|async|both] [--nodes 2|3]

``--mode async`` forces asynchronous in-region replication (the spec's ``sync_replication``
false, what ``PGCRDR_SYNC_REPLICATION=off`` makes the control plane send), for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr.security.tls import issue_server_cert, make_ca  # noqa: E402
from tests.component.conftest import Agent, make_spec, region_agents, wait_for  # noqa: E402
from tests.component.test_agent import Writer, dsn  # noqa: E402

REGION = "bench-nl"
RESTART_AFTER_S = 30.0  # the killed node stays down this long (longer than a failover, ~21 s)


def wait_ready(agent: Agent, cluster: str, timeout: float = 180) -> object:
    return wait_for(f"{cluster} ready", lambda: (s := agent.status(cluster)).ready and s, timeout, interval=0.2)


def one_run(agent: Agent, cluster: str, run: int) -> dict[str, float]:
    st = wait_ready(agent, cluster)
    old = next(n for n in st.nodes if n.role == "primary")  # type: ignore[attr-defined]
    others = {n.pg_port: n for n in st.nodes if n.role == "replica"}  # type: ignore[attr-defined]
    table = f"acked_{run}"
    with psycopg.connect(dsn(st.primary.port), autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    w = Writer(st.primary.port, table, interval=0.005).start()  # type: ignore[attr-defined]
    try:
        wait_for("some acknowledged writes", lambda: len(w.ok) >= 200, 30, interval=0.05)
        with agent.http() as c:
            r = c.post(f"/clusters/{cluster}/nodes/{old.name}/kill", params={"restart_after": RESTART_AFTER_S})
            r.raise_for_status()
        killed_at = time.monotonic()
        n_ok = len(w.ok)
        wait_for("writes to resume", lambda: len(w.ok) > n_ok, 90, interval=0.05)
        resume_s = w.ok_at[n_ok] - killed_at
        wait_for("a few more writes", lambda: len(w.ok) > n_ok + 50, 30, interval=0.05)
    finally:
        w.finish()
    with psycopg.connect(dsn(st.primary.port)) as conn:  # type: ignore[attr-defined]
        port = conn.execute("SELECT inet_server_port()").fetchone()[0]
        present = {r[0] for r in conn.execute(f"SELECT id FROM {table}")}  # noqa: S608
    if port not in others:
        raise RuntimeError(f"the writer endpoint reaches port {port}, not a survivor")
    lost = sorted(set(w.ok) - present)
    phantom = sorted(set(w.failed) & present)
    if phantom:
        raise RuntimeError(f"ids never sent are present: {phantom[:10]}")
    print(f"  run {run}: killed {old.name}; writes resumed after {resume_s:.2f}s; lost {len(lost)} of "
          f"{len(w.ok)} acknowledged {lost[:5]}; unknown {len(w.unknown)}", file=sys.stderr)
    return {"acknowledged writes lost": float(len(lost)), "kill -> writes resume (s)": resume_s,
            "writes broken in flight": float(len(w.unknown))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--mode", choices=["sync", "async", "both"], default="sync")
    ap.add_argument("--nodes", type=int, choices=[2, 3], default=2, help="3: premium-like (quorum)")
    ap.add_argument("--first-offset", type=int, default=20000, help="where to look for free ports")
    args = ap.parse_args()
    modes = ["sync", "async"] if args.mode == "both" else [args.mode]

    ca = make_ca("pgcrdr bench CA")
    srv = issue_server_cert(ca, ["127.0.0.1", "localhost"])
    tls = {"ca_cert_pem": ca.cert_pem, "cert_pem": srv.cert_pem, "key_pem": srv.key_pem}
    rows: dict[str, dict[str, list[float]]] = {}
    with region_agents([REGION], first_offset=args.first_offset) as (agent,):
        for mode in modes:
            cluster = f"nl-{mode}"
            spec = make_spec(cluster, args.nodes, tls, sync_replication=(mode == "sync"))
            spec["backup"] = {"enabled": False}
            with agent.http() as c:
                c.put(f"/clusters/{cluster}", json=spec).raise_for_status()
            print(f"{mode}: {cluster} ({args.nodes} nodes)", file=sys.stderr)
            for i in range(1, args.runs + 1):
                for k, v in one_run(agent, cluster, i).items():
                    rows.setdefault(mode, {}).setdefault(k, []).append(v)
            wait_ready(agent, cluster)
            with agent.http() as c:
                c.delete(f"/clusters/{cluster}").raise_for_status()

    print()
    print(f"{'replication':<13}{'measure':<32}{'median':>9}{'min':>9}{'max':>9}{'total':>8}{'runs':>6}")
    for mode, measures in rows.items():
        for m, vals in measures.items():
            total = f"{sum(vals):.0f}" if "(s)" not in m else ""
            print(f"{mode:<13}{m:<32}{statistics.median(vals):>9.2f}{min(vals):>9.2f}{max(vals):>9.2f}"
                  f"{total:>8}{len(vals):>6}")
    print(f"({args.nodes} nodes, Patroni ttl 20 s; writes every 5 ms through the region's writer endpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
