#!/usr/bin/env python3
"""Benchmark: the control-plane leader SIGKILLed, until the control plane leads again; and the
active writer's region cut off, until writes land in the other region without any request.

Runs on a lab of hosts (root; pgcrdr.lab): a control-plane replica on each region host and on
the witness host, a global etcd of three members (r0, r1, w), each region's agent. Each run
SIGKILLs the replica that leads and measures, from the kill:

- **new leader**: until a surviving replica's API names another live replica as its leader
  (``X-Pgcrdr-Leader``): from then on operations are carried out again (the reconciler and the
  operations run on the leader only);
- **API write**: until a surviving replica's API has answered a write (a new access token): the API of
  the survivors never depended on the leader, so this is the store's answer time.

The killed replica is started again before the next run.

Then a startup-4 pair (a service in each region) with automatic failover enabled (grace
``--grace`` s, the default writer lease of 10 s) takes writes through the multi-host Service URI
(every replica's endpoint; the client gives up a cut-off host after 2 s, ``tcp_user_timeout``).
Each run cuts the active writer's region host off (its processes run on) and measures:

- **first write in the other region**: from the partition to the first write acknowledged
  through the multi-host URI after it: a new leader if the leader was in the cut-off region,
  the grace period, the cut-off region's writer lease expiring (its writer has stopped), the
  promotion, the endpoints following it;
- the failover's own figures: how long it waited for the writer lease, its duration.

The region is healed and the pair failed back (failback restore from the old writer's own data,
then failback promote: only the primary fails over by itself, as in Aiven's CRDR) before the next
run. Prints each run and the medians.

    .venv/bin/python bench/control_plane_failover.py [--runs 5] [--ttl 5] [--grace 2]
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
from pgcrdr.lab import heal, partition  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import Writer, first_after, wait_for  # noqa: E402
from tests.lab_helpers import LabPlatform, lab_platform  # noqa: E402

REPLICAS = ("r0", "r1", "w")
PROJECT = "pgcrdr"
CLOUDS = ("bench-a", "bench-b")
PRI, REC = "cpf-primary", "cpf-primary-dr"
HOST_OF = {CLOUDS[0]: "r0", CLOUDS[1]: "r1"}  # the lab puts the first region on r0, the second on r1


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


def make_pair(p: LabPlatform, grace: int) -> str:
    """The pair, a table, automatic failover on; returns the multi-host Service URI."""
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", CLOUDS[0],
          "--project", PROJECT)
    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "240")
    multi = p.service(PROJECT, PRI)["connection_info"]["pg_multihost"][0]
    import psycopg

    with psycopg.connect(multi, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", CLOUDS[1],
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "300")
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery", json={
            "automatic_failover": {"enabled": True, "grace_seconds": grace, "max_data_loss_bytes": 2 ** 26}})
        r.raise_for_status()
    return multi


def _failovers(p: LabPlatform, api_url: str) -> list[dict]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"aivenv1 {p.token}"}, timeout=10) as c:
        d = c.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()
    return [o for o in d["history"] if o["kind"] == "failover"] if d["operation"] is None else []


def lead_from(p: LabPlatform, host: str) -> None:
    """Make the replica on ``host`` the leader: the leader is stopped with SIGTERM (it hands over at
    once to whichever replica campaigns first) and started again, until ``host``'s leads."""
    d = p.deployment
    assert d is not None
    names = {p.lab.host(h).netns: h for h in REPLICAS}
    url = d.replica_settings(host).api_url
    for _ in range(12):
        leader = names.get(wait_for("a leader", lambda: leader_at(url), timeout=30, interval=0.05) or "")
        if leader == host:
            return
        assert leader is not None
        os.kill(d.replica_pid(leader) or 0, signal.SIGTERM)
        wait_for(f"the replica on {leader} to stop", lambda lead=leader: d.replica_pid(lead) is None, timeout=60)
        d.start_replica(leader)
        wait_for(f"the replica on {leader} to answer again",
                 lambda lead=leader: leader_at(d.replica_settings(lead).api_url), timeout=60)
    raise RuntimeError(f"the replica on {host} never became the leader")


def partition_run(p: LabPlatform, multi: str, leader_there: bool) -> tuple[str, bool, float, float | None,
                                                                            float | None]:
    """Cut the active region off; returns (region cut, the leader was there, s to the first write in
    the other region, the failover's writer-lease wait, its duration)."""
    d = p.deployment
    assert d is not None
    cloud = CLOUDS[0]
    cut = HOST_OF[cloud]  # the primary's region, its writer active
    survivor = next(h for h in REPLICAS if h != cut)
    url = d.replica_settings(survivor).api_url
    if leader_there:
        lead_from(p, cut)
    before = len(_failovers(p, url))
    leader = leader_at(url)
    writer = Writer(multi, tcp_user_timeout=2000)
    writer.start()
    try:
        wait_for("writes through the multi-host URI", lambda: len(writer.log.ok) > 10, timeout=60)
        partition(p.lab, cut)
        t0 = time.monotonic()
        try:
            try:
                wait_for("a write in the other region", lambda: first_after(writer.log.ok_times, t0 + 0.5),
                         timeout=180, interval=0.05)
            except AssertionError as exc:
                said = []
                for h in REPLICAS:
                    if h != cut:
                        log = (d.home(h, "control") / "run" / "pgcrdr.log").read_text().splitlines()
                        said += [f"{h}: {ln[:240]}" for ln in log[-400:] if any(
                            w in ln for w in ("automatic", "failover", "lease", "lead", "WARN", "ERROR"))][-15:]
                with httpx.Client(base_url=url, headers={"Authorization": f"aivenv1 {p.token}"}, timeout=10) as c:
                    dr = c.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").text
                raise RuntimeError(f"{exc}; last client error {writer.log.last_error}; the survivors said:\n"
                                   + "\n".join(said) + f"\nDR: {dr[:3000]}") from None
            resumed = (first_after(writer.log.ok_times, t0 + 0.5) or 0.0) - t0
        finally:
            heal(p.lab, cut)
        ended = wait_for("the automatic failover to end", lambda: len(_failovers(p, url)) > before and
                         _failovers(p, url)[-1], timeout=180)
    finally:
        writer.stop()
    if ended["state"] != "done":
        raise RuntimeError(f"the automatic failover ended {ended['state']}: {ended.get('message')}")
    lease = (ended.get("data_loss") or {}).get("writer_lease_wait_s")
    # fail back, as the next run needs it (only the primary fails over by itself, as in Aiven's
    # CRDR): the old writer is rebuilt as the passive copy from its own region's data, then takes over
    p.avn("service", "update", PRI, "--disaster-recovery-role", "passive", "--project", PROJECT)
    helpers.wait_done(p, PROJECT, PRI, "failback_restore", timeout=600)
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    helpers.wait_done(p, PROJECT, PRI, "failback_promote", timeout=300)
    was_there = leader is not None and leader == p.lab.host(cut).netns
    took = sum(st.get("duration_s") or 0.0 for st in ended["steps"])
    return cloud, was_there, resumed, lease, round(took, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ttl", type=int, default=5, help="PGCRDR_LEADER_TTL of the replicas (seconds)")
    ap.add_argument("--grace", type=int, default=2, help="automatic failover's grace period (seconds)")
    ap.add_argument("--skip-leader-loss", action="store_true")
    ap.add_argument("--skip-partition", action="store_true")
    ap.add_argument("--leader-there", action="store_true",
                    help="before each partition, make the replica in the region to be cut off the leader")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces)")
    env = {h: {"PGCRDR_LEADER_TTL": str(args.ttl)} for h in REPLICAS}
    rows, cuts = [], []
    with lab_platform(list(CLOUDS), lab_id=f"rb{os.getpid() % 1000}", subnet=190 + os.getpid() % 10,
                      replicas=REPLICAS, store_hosts=("r0", "r1", "w"), replica_env=env) as p:
        for _ in range(0 if args.skip_leader_loss else args.runs):
            rows.append(one_run(p))
        if not args.skip_partition:
            multi = make_pair(p, args.grace)
            for _ in range(args.runs):
                cuts.append(partition_run(p, multi, args.leader_there))
    if cuts:
        t = Table(title=f"active region cut off -> first write in the other region, automatic failover "
                        f"(grace {args.grace} s, writer lease 10 s, leader lease {args.ttl} s)")
        for col in ("run", "region cut", "leader was there", "s to the first write", "lease waited s",
                    "failover steps s"):
            t.add_column(col)
        for i, (cloud, there, resumed, lease, dur) in enumerate(cuts, 1):
            t.add_row(str(i), cloud, "yes" if there else "no", f"{resumed:.2f}", f"{lease}", f"{dur}")
        t.add_row("median", "", "", f"{statistics.median(c[2] for c in cuts):.2f}", "", "")
        Console().print(t)
    if not rows:
        return
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
