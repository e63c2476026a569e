#!/usr/bin/env python3
"""Benchmark: the cost of synchronous in-region replication, side by side in one run.

Starts one region agent (as the component tests do) with two 2-node clusters in the same region:
one replicating synchronously (the default of multi-node plans: Patroni synchronous_mode,
synchronous_commit = on) and one forced asynchronous (the spec's ``sync_replication`` false, what
``PGCRDR_SYNC_REPLICATION=off`` makes the control plane send). Runs pgbench (TPC-B-like) through
each cluster's writer endpoint in turn, alternating, and prints median TPS and latency
percentiles per transaction (pgbench's per-transaction log).

    .venv/bin/python bench/sync_cost.py [--runs 3] [--seconds 15] [--clients 4]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr.security.tls import issue_server_cert, make_ca  # noqa: E402
from tests.component.conftest import make_spec, region_agents, wait_for  # noqa: E402

REGION = "bench-sc"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def conninfo(port: int) -> str:
    return (f"host=127.0.0.1 port={port} user=avnadmin password=admin-pw dbname=defaultdb "
            "sslmode=require connect_timeout=5")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def pgbench(port: int, seconds: int, clients: int, logdir: Path, tag: str) -> dict[str, float]:
    prefix = logdir / tag
    out = subprocess.run([PGBENCH, "-n", "-M", "simple", "-c", str(clients), "-j", "2", "-T", str(seconds),
                          "-l", f"--log-prefix={prefix}", conninfo(port)],
                         check=True, capture_output=True, text=True, cwd=logdir).stdout
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    lat: list[float] = []
    for f in logdir.glob(f"{tag}.*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1000.0)  # microseconds -> ms
        f.unlink()
    return {"TPS": float(m.group(1)), "latency p50 (ms)": percentile(lat, 0.50),
            "latency p95 (ms)": percentile(lat, 0.95), "latency p99 (ms)": percentile(lat, 0.99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--first-offset", type=int, default=24000, help="where to look for free ports")
    args = ap.parse_args()

    ca = make_ca("pgcrdr bench CA")
    srv = issue_server_cert(ca, ["127.0.0.1", "localhost"])
    tls = {"ca_cert_pem": ca.cert_pem, "cert_pem": srv.cert_pem, "key_pem": srv.key_pem}
    modes = {"sync": True, "async": False}
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    with region_agents([REGION], first_offset=args.first_offset) as (agent,), \
            tempfile.TemporaryDirectory(prefix="pgcrdr-sync-cost-") as tmp:
        ports: dict[str, int] = {}
        for mode, sync in modes.items():
            spec = make_spec(f"sc-{mode}", 2, tls, sync_replication=sync)
            spec["backup"] = {"enabled": False}
            with agent.http() as c:
                c.put(f"/clusters/sc-{mode}", json=spec).raise_for_status()
        for mode, sync in modes.items():
            st = wait_for(f"sc-{mode} ready", lambda m=mode: (s := agent.status(f"sc-{m}")).ready and s, 180)
            if bool(st.sync_standbys) != sync:
                raise RuntimeError(f"sc-{mode}: sync standbys {st.sync_standbys}")
            ports[mode] = st.primary.port
            subprocess.run([PGBENCH, "-i", "-q", "-s", str(args.scale), conninfo(ports[mode])], check=True,
                           capture_output=True)
        for mode in modes:  # warm-up, discarded (the first run after pgbench -i is slow)
            pgbench(ports[mode], 5, args.clients, Path(tmp), f"warm-{mode}")
        for i in range(args.runs):
            order = list(modes) if i % 2 == 0 else list(reversed(modes))  # alternate who goes first
            for mode in order:
                r = pgbench(ports[mode], args.seconds, args.clients, Path(tmp), f"{mode}{i}")
                print(f"  run {i + 1} {mode}: {r['TPS']:.0f} tps, p95 {r['latency p95 (ms)']:.2f} ms",
                      file=sys.stderr)
                for k, v in r.items():
                    rows[mode].setdefault(k, []).append(v)

    print()
    print(f"{'measure':<20}{'sync (median)':>15}{'async (median)':>16}{'sync / async':>14}{'runs':>6}")
    for k in rows["sync"]:
        s, a = statistics.median(rows["sync"][k]), statistics.median(rows["async"][k])
        print(f"{k:<20}{s:>15.2f}{a:>16.2f}{s / a:>14.2f}{len(rows['sync'][k]):>6}")
    print(f"(pgbench TPC-B-like, scale {args.scale}, {args.clients} clients, {args.seconds} s a run, through "
          "each 2-node cluster's writer endpoint over TLS; synchronous_commit = on)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
