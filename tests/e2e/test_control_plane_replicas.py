"""Control-plane replicas on the lab: a replica on each region host (r0, r1), a global etcd of
three members (r0, r1 and the witness host w), a startup-4 pair made with the real avn. The leader
is SIGKILLed right after each step of one switchover in turn (its persisted state says which: the
crash drill ``PGCRDR_CRASH_AFTER``); each next leader resumes the operation from its persisted
steps and the move completes, under the acknowledged-writes checker writing through the
multi-host URI and the two-writer probe, with the default pause window. Then the witness host's
etcd member is killed: nothing changes for the pair; a planned move holds the pooled clients of
every replica (none sees an error); region A is cut off.

The tests in this module run in order and share one deployment and one pair of services.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from pgcrdr.agentapi.client import AgentClient
from pgcrdr.api.replica import LEADER_HEADER
from pgcrdr.controlplane import crdr
from pgcrdr.controlplane.services import cluster_id
from pgcrdr.lab import heal, in_host, partition
from pgcrdr.platform import STORE_MEMBER_PID, pid_path, read_pid
from tests import helpers
from tests.helpers import Writer, WriterProbe, first_after, wait_for
from tests.lab_helpers import LabPlatform, ids_in_data_dir, lab_platform

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a lab of network namespaces needs root")  # CI is root

PROJECT = "pgcrdr"
PRI, REC = "rp-primary", "rp-primary-dr"
PRI_CLOUD, REC_CLOUD = "rp-europe", "rp-america"
REPLICAS = ("r0", "r1")
# A short lease keeps the test short; the pause window is the default (5 s): a leader lost for
# longer than it is replaced by one that completes the move (it pauses again before the demote,
# and goes on without holding pooled writes after it).
COMMON = {"PGCRDR_LEADER_TTL": "3"}
SWITCHOVER = crdr.STEPS["switchover"]
# The leader dies after each step in turn: r0 after the first, r1 after the second, r0 (restarted)
# after the third... A replica restarted by the test gets the step two on from the one it died after.
CRASH = {"r0": f"switchover:{SWITCHOVER[0]}", "r1": f"switchover:{SWITCHOVER[1]}"}
state: dict = {}


@pytest.fixture(scope="module")
def lab():
    env = {host: {**COMMON, "PGCRDR_CRASH_AFTER": CRASH[host]} for host in REPLICAS}
    with lab_platform([PRI_CLOUD, REC_CLOUD], lab_id=f"rp{os.getpid() % 1000}", subnet=180 + os.getpid() % 20,
                      replicas=REPLICAS, store_hosts=("r0", "r1", "w"), replica_env=env) as p:
        yield p


def at(p: LabPlatform, host: str) -> LabPlatform:
    """The platform as a client of the replica on ``host`` (every replica serves the API)."""
    assert p.deployment is not None
    return dataclasses.replace(p, api_url=p.deployment.replica_settings(host).api_url)


def leader_seen_by(p: LabPlatform, host: str) -> str | None:
    try:
        r = httpx.get(at(p, host).api_url + "/v1/clouds", timeout=2)
    except httpx.HTTPError:
        return None
    return r.headers.get(LEADER_HEADER) or None


def netns(p: LabPlatform, host: str) -> str:
    return p.lab.host(host).netns


def wait_leader(p: LabPlatform, host: str, timeout: float = 20) -> float:
    """Until the replica on ``host`` leads, as every live replica sees it; returns when."""
    def agreed() -> bool:
        seen = [leader_seen_by(p, h) for h in REPLICAS]
        return all(s in (None, netns(p, host)) for s in seen) and netns(p, host) in seen

    wait_for(f"the replica on {host} to lead", agreed, timeout=timeout, interval=0.05)
    return time.monotonic()


def lost_leaderships(p: LabPlatform) -> list[str]:
    """What the replicas logged when one lost the leadership (a renewal missed under load)."""
    assert p.deployment is not None
    said = []
    for h in REPLICAS:
        log = p.deployment.home(h, "control") / "run" / "pgcrdr.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            said += [f"{h}: {ln[:200]}" for ln in lines if "lost the leadership" in ln]
    return said


def make_lead(p: LabPlatform, host: str) -> None:
    """Arrange for the replica on ``host`` to lead. It normally still does; a leader whose renewal
    was starved past its short test lease (3 s) on a loaded machine was replaced, and the other
    replica leads until it goes: it is stopped with SIGTERM (it resigns: the key goes at once)
    and started again as a follower."""
    assert p.deployment is not None
    try:
        wait_leader(p, host, timeout=10)
        return
    except AssertionError:
        pass
    leader = wait_for("a leader", lambda: next(filter(None, (leader_seen_by(p, h) for h in REPLICAS)), None),
                      timeout=30)
    for other in REPLICAS:
        if other != host and leader == netns(p, other):
            print(f"\nthe replica on {other} leads, not {host}; it is restarted (it lost: {lost_leaderships(p)[-4:]})")
            os.kill(p.deployment.replica_pid(other) or 0, signal.SIGTERM)
            wait_for(f"{other} to stop", lambda o=other: p.deployment.replica_pid(o) is None, timeout=60)
            p.deployment.start_replica(other)
    wait_leader(p, host, timeout=30)


def wait_dead(p: LabPlatform, host: str, timeout: float = 120) -> float:
    assert p.deployment is not None
    wait_for(f"the replica on {host} to be killed by its crash drill", lambda: p.deployment.replica_pid(host) is None,
             timeout=timeout, interval=0.05)
    return time.monotonic()


def restart(p: LabPlatform, host: str, crash_after: str | None = None) -> None:
    assert p.deployment is not None
    p.deployment.replica_env[host] = {**COMMON, **({"PGCRDR_CRASH_AFTER": crash_after} if crash_after else {})}
    p.deployment.start_replica(host)


def leads_or_died(p: LabPlatform, host: str) -> bool:
    """The replica on ``host`` leads (its own API says so), or its crash drill already killed it."""
    assert p.deployment is not None
    return p.deployment.replica_pid(host) is None or leader_seen_by(p, host) == netns(p, host)


def test_a_pair_created_with_the_real_avn_through_the_replicas(lab: LabPlatform):
    p = lab
    assert p.deployment is not None
    make_lead(p, "r0")  # r0 must lead first: its drill is the first step
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", PRI_CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "180")
    pri = p.service(PROJECT, PRI)
    multi = pri["connection_info"]["pg_multihost"][0]
    hosts = ",".join(f"{p.lab.host(h).address}:{pri['service_uri_params']['port']}" for h in REPLICAS)
    assert f"@{hosts}/" in multi and "target_session_attrs=read-write" in multi
    with psycopg.connect(multi, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
    # the follower's API takes writes too: the recovery service is asked for at r1
    at(p, "r1").avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
                    "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "240")
    assert helpers.role_of(p, PROJECT, REC)["disaster_recovery_role"] == "passive"
    # every replica serves the Service URI: each one alone takes writes
    for h in REPLICAS:
        one = pri["service_uri"].replace(f"@{pri['service_uri_params']['host']}:", f"@{p.lab.host(h).address}:")
        wait_for(f"the Service URI on {h} to reach the writer", lambda one=one: _writes(one), timeout=30)
    state["multi"] = multi


def _writes(uri: str) -> bool:
    try:
        with psycopg.connect(uri, connect_timeout=3, autocommit=True) as conn:
            conn.execute("INSERT INTO acked_writes(id) VALUES (gen_random_uuid()::text)")
        return True
    except psycopg.Error:
        return False


def test_the_next_leader_completes_a_switchover_whose_leaders_die(lab: LabPlatform):
    p = lab
    writer = Writer(state["multi"])
    probe = WriterProbe(lambda: p.node_dsns(PROJECT, [(PRI, PRI_CLOUD), (REC, REC_CLOUD)]), connect=p.connect_node)
    writer.start()
    probe.start()
    try:
        wait_for("acknowledged writes through the multi-host URI", lambda: len(writer.log.ok) > 20, timeout=60)
        p.avn("service", "update", REC, "--disaster-recovery-role", "active", "--project", PROJECT)
        handovers = []
        for i, step in enumerate(SWITCHOVER):
            host, other = REPLICAS[i % 2], REPLICAS[(i + 1) % 2]
            died = wait_dead(p, host)  # right after `step` was persisted
            # the other one takes over (or already ran its step and died) before this one is back,
            # so that each step in turn is the last one of a leader
            wait_for(f"the replica on {other} to lead after {step}", lambda o=other: leads_or_died(p, o),
                     timeout=60, interval=0.05)
            handovers.append((step, time.monotonic() - died))
            nxt = SWITCHOVER[i + 2] if i + 2 < len(SWITCHOVER) else None
            restart(p, host, f"switchover:{nxt}" if nxt else None)
        op = helpers.wait_done(p, PROJECT, REC, "switchover", timeout=120)
        assert [s["state"] for s in op["steps"]] == ["done"] * len(op["steps"]), json.dumps(op, indent=1)
        n = len(writer.log.ok)
        wait_for("writes after the switchover", lambda: len(writer.log.ok) > n + 20, timeout=60)
    finally:
        writer.stop()
        probe.stop()
    assert probe.two_writers == [], f"two writable nodes at once: {probe.two_writers[:3]}"
    assert helpers.role_of(p, PROJECT, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    with psycopg.connect(state["multi"], connect_timeout=10) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
    lost = set(writer.log.ok) - stored
    assert not lost, f"{len(lost)} acknowledged writes lost"
    assert not (set(writer.log.failed) & stored)
    print("\nthe leader killed after each switchover step; the next one led after: "
          + ", ".join(f"{s} {t:.1f} s" for s, t in handovers)
          + f"; writes ok {len(writer.log.ok)}, failed {len(writer.log.failed)}, unknown {len(writer.log.unknown)}, "
          f"write pause {op.get('write_pause_s')} s; leader lost in the window {op.get('data', {}).get('leader_lost')}")


def test_the_witness_lost_changes_nothing_for_the_pair(lab: LabPlatform):
    p = lab
    assert p.deployment is not None
    witness = read_pid(pid_path(dataclasses.replace(p.deployment.replica_settings("r0"),
                                                    home=p.deployment.home("w", "store")), STORE_MEMBER_PID))
    assert witness is not None
    leader = leader_seen_by(p, "r0")
    writer = Writer(state["multi"])
    writer.start()
    try:
        wait_for("writes", lambda: len(writer.log.ok) > 10, timeout=30)
        os.kill(witness, signal.SIGKILL)
        t = time.monotonic()
        # the store keeps its quorum: the API still writes (a tag), the leader stays, writes go on
        p.avn("service", "tags", "replace", PRI, "--tag", "witness=lost", "--project", PROJECT)
        n = len(writer.log.ok)
        wait_for("writes after the witness was lost", lambda: len(writer.log.ok) > n + 20, timeout=30)
        assert leader_seen_by(p, "r0") == leader == leader_seen_by(p, "r1")
        assert time.monotonic() - t < 30
    finally:
        writer.stop()
    assert writer.log.failed == [] and writer.log.unknown == [], writer.log.last_error
    assert helpers.role_of(p, PROJECT, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert "witness" in p.avn("service", "tags", "list", PRI, "--project", PROJECT).stdout


def test_a_planned_move_holds_the_pooled_clients_of_every_replica(lab: LabPlatform):
    """A switchback with a pooled client on each replica's PgBouncer: the leader's PAUSE step ends
    once the other replica has paused too (pause intents in the global etcd), so neither client
    sees an error, and every acknowledged write is kept."""
    p = lab
    p.deployment.start_store_member("w")  # the witness is back (the test before killed it)
    p.deployment.wait_store(60)
    pri = p.service(PROJECT, PRI)
    pooled, first = pri["connection_info"]["pgbouncer"][0], pri["service_uri_params"]["host"]
    writers = {h: Writer(pooled.replace(f"@{first}:", f"@{p.lab.host(h).address}:"), prepare_threshold=None)
               for h in REPLICAS}
    for w in writers.values():
        w.start()
    try:
        wait_for("pooled writes on every replica", lambda: all(len(w.log.ok) > 20 for w in writers.values()),
                 timeout=60)
        p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
        op = helpers.wait_done(p, PROJECT, PRI, "switchback", timeout=120)
        n = {h: len(w.log.ok) for h, w in writers.items()}
        wait_for("pooled writes after the move on every replica",
                 lambda: all(len(w.log.ok) > n[h] + 20 for h, w in writers.items()), timeout=60)
    finally:
        logs = {h: w.stop() for h, w in writers.items()}
    pause = next(s for s in op["steps"] if s["name"] == "pause")
    assert "1 other replica(s) paused" in (pause["detail"] or ""), pause
    with psycopg.connect(state["multi"], connect_timeout=10) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
    for h, log in logs.items():
        assert log.failed == [] and log.unknown == [], f"pooled client on {h}: {log.last_error}"
        assert set(log.ok) <= stored, f"pooled client on {h}: acknowledged writes lost"
    print(f"\nswitchback with a pooled client on each replica: {pause['detail']}; write pause "
          f"{op.get('write_pause_s')} s; writes " + ", ".join(f"{h} {len(lg.ok)}" for h, lg in logs.items())
          + " (0 errors)")


def test_region_a_with_the_leader_and_the_writer_cut_off(lab: LabPlatform):
    """Region A holds the control-plane leader and the active writer, and the pair opted in to
    automatic failover; A is cut off, its processes running. Another replica leads; a client
    inside A sees its writer refuse writes within the writer lease's TTL; writes through the
    multi-host URI resume in region B without any request. On heal there is exactly one writer,
    and the commits A took before it fenced itself are listed in the failover's report and kept."""
    p = lab
    assert p.deployment is not None
    if read_pid(pid_path(dataclasses.replace(p.deployment.replica_settings("r0"),
                                             home=p.deployment.home("w", "store")), STORE_MEMBER_PID)) is None:
        p.deployment.start_store_member("w")  # the witness is back: the store keeps its quorum without A
        p.deployment.wait_store(60)
    if helpers.role_of(p, PROJECT, PRI)["disaster_recovery_role"] != "active":
        p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
        helpers.wait_done(p, PROJECT, PRI, "switchback", timeout=120)
    make_lead(p, "r0")
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery",
                  json={"automatic_failover": {"enabled": True, "grace_seconds": 2, "max_data_loss_bytes": 2 ** 26}})
        assert r.status_code == 200, r.text
    svc = p.service(PROJECT, PRI)
    s = p.deployment.agent_settings("r0")
    region = s.region(PRI_CLOUD)
    assert region is not None
    agent = AgentClient(s.agent_url(region), p.agent_token(), timeout=10, verify=p.settings().agent_verify)
    own = agent.get_cluster(cluster_id(PROJECT, PRI)).primary  # A's own endpoint, on A's host
    agent.close()
    pw = svc["service_uri_params"]["password"]
    with in_host(p.lab, "r0"):  # a client inside region A
        inside = Writer(f"host={own.host} port={own.port} user=avnadmin password={pw} dbname=defaultdb "
                        "sslmode=require", interval=0.05)
        inside.start()
    # as a real client must: a connection to a host that was cut off is given up after 2 s of
    # unacknowledged data (else the kernel retries for minutes), then libpq tries the next host
    multi = Writer(state["multi"], tcp_user_timeout=2000)
    multi.start()
    try:
        wait_for("writes inside A and through the multi-host URI",
                 lambda: len(inside.log.ok) > 10 and len(multi.log.ok) > 10, timeout=60)
        partition(p.lab, "r0")
        t0 = time.monotonic()
        led = wait_leader(p, "r1", timeout=30) - t0
        before = len(inside.log.failed) + len(inside.log.unknown)
        wait_for("the writer inside A to refuse writes",
                 lambda: len(inside.log.failed) + len(inside.log.unknown) > before, timeout=60, interval=0.05)
        fenced = time.monotonic() - t0
        last_inside = max(inside.log.ok_times)
        wait_for("writes through the multi-host URI in region B, without a request",
                 lambda: first_after(multi.log.ok_times, t0 + 0.5), timeout=90, interval=0.05)
        resumed = first_after(multi.log.ok_times, t0 + 0.5) - t0
    except AssertionError as exc:
        logged = (p.deployment.home("r1", "control") / "run" / "pgcrdr.log").read_text().splitlines()
        said = [ln[:250] for ln in logged if any(w in ln for w in ("automatic", "failover", "lease", "lead", "WARN"))]
        raise AssertionError(f"{exc}; the replica on r1 said: {said[-25:]}; DR: "
                             f"{json.dumps(helpers.dr_status(at(p, 'r1'), PROJECT, PRI))[:3000]}") from None
    finally:
        heal(p.lab, "r0")
    failover = helpers.wait_done(p, PROJECT, PRI, "failover", timeout=120)
    assert failover["details"]["automatic"].startswith("automatic:"), failover
    assert last_inside < t0 + resumed, "A took a write after B took writes"
    t_heal = time.monotonic()
    probe = WriterProbe(lambda: p.node_dsns(PROJECT, [(PRI, PRI_CLOUD), (REC, REC_CLOUD)]), connect=p.connect_node)
    probe.start()
    time.sleep(5)
    probe.stop()
    inside_log, multi_log = inside.stop(), multi.stop()
    old = {n for n in p.node_dsns(PROJECT, [(PRI, PRI_CLOUD)])}
    assert not (probe.writers_seen & old) and probe.two_writers == [], (probe.writers_seen, probe.two_writers)
    taken = {w for w, t in zip(inside_log.ok, inside_log.ok_times, strict=True) if t > t0}
    # the commits A took before fencing itself: listed by the failback restore, kept aside
    p.avn("service", "update", PRI, "--disaster-recovery-role", "passive", "--project", PROJECT)
    restore = helpers.wait_done(p, PROJECT, PRI, "failback_restore", timeout=300)
    failover = next(o for o in reversed(helpers.dr_status(p, PROJECT, PRI)["history"]) if o["kind"] == "failover")
    assert failover["data_loss"].get("divergent_commits", -1) >= len(taken), failover["data_loss"]
    kept = ids_in_data_dir(Path(restore["details"]["preserved"]["path"]), s.pg_bin_dir, s.os_user)
    assert taken <= kept
    after = {w for w, t in zip(multi_log.ok, multi_log.ok_times, strict=True) if t > t0}
    assert not (after & kept), "A took a write through the Service URI after the partition"
    print(f"\nregion A (leader and writer) cut off: r1 led {led:.2f} s later; the writer inside A refused writes "
          f"{fenced:.2f} s after the partition; writes through the multi-host URI in B {resumed:.2f} s after it, "
          f"without a request (lease waited {failover['data_loss'].get('writer_lease_wait_s')} s); A took "
          f"{len(taken)} commits meanwhile, all kept; one writer after the heal "
          f"({time.monotonic() - t_heal:.0f} s watched)")
