"""Control-plane replicas on the lab: a replica on each region host (r0, r1), a global etcd of
three members (r0, r1 and the witness host w), a startup-4 pair made with the real avn. The leader
is SIGKILLed right after a switchover step (its persisted state says which: the crash drill
``PGCRDR_CRASH_AFTER``), twice in one switchover; the next leader resumes the operation from its
persisted steps and completes it, under the acknowledged-writes checker writing through the
multi-host URI and the two-writer probe. Then the witness host's etcd member is killed: nothing
changes for the pair.

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
# A short lease keeps the test short; the pause window is longer than two leader changes, so a
# move whose leader died after its PAUSE is completed rather than undone at its deadline.
COMMON = {"PGCRDR_LEADER_TTL": "3", "PGCRDR_PAUSE_DEADLINE": "30"}
CRASH = {"r0": "switchover:pause", "r1": "switchover:promote"}
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


def wait_dead(p: LabPlatform, host: str, timeout: float = 120) -> float:
    assert p.deployment is not None
    wait_for(f"the replica on {host} to be killed by its crash drill", lambda: p.deployment.replica_pid(host) is None,
             timeout=timeout, interval=0.05)
    return time.monotonic()


def restart_without_drill(p: LabPlatform, host: str) -> None:
    assert p.deployment is not None
    p.deployment.replica_env[host] = dict(COMMON)
    p.deployment.start_replica(host)


def test_a_pair_created_with_the_real_avn_through_the_replicas(lab: LabPlatform):
    p = lab
    assert p.deployment is not None
    if leader_seen_by(p, "r0") != netns(p, "r0"):
        # r0 must lead first (its drill is the first step); a replica that resigns hands over at once
        wait_for("a leader", lambda: leader_seen_by(p, "r0"), timeout=20)
        os.kill(p.deployment.replica_pid("r1") or 0, signal.SIGTERM)
        wait_for("r1 to stop", lambda: p.deployment.replica_pid("r1") is None, timeout=60)
        p.deployment.start_replica("r1")
    wait_leader(p, "r0")
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
        r0_died = wait_dead(p, "r0")  # right after `pause` was persisted
        r1_led = wait_leader(p, "r1", timeout=30)
        restart_without_drill(p, "r0")
        r1_died = wait_dead(p, "r1")  # right after `promote` was persisted
        r0_led = wait_leader(p, "r0", timeout=60)
        restart_without_drill(p, "r1")
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
    print(f"\nleader lost after pause: r1 led {r1_led - r0_died:.2f} s later; after promote: r0 led "
          f"{r0_led - r1_died:.2f} s later; writes ok {len(writer.log.ok)}, failed {len(writer.log.failed)}, "
          f"unknown {len(writer.log.unknown)}, write pause {op.get('write_pause_s')} s")


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


def test_region_a_with_the_leader_and_the_writer_cut_off(lab: LabPlatform):
    """Region A holds the control-plane leader and the active writer, and the pair opted in to
    automatic failover; A is cut off, its processes running. Another replica leads; a client
    inside A sees its writer refuse writes within the writer lease's TTL; writes through the
    multi-host URI resume in region B without any request. On heal there is exactly one writer,
    and the commits A took before it fenced itself are listed in the failover's report and kept."""
    p = lab
    assert p.deployment is not None
    p.deployment.start_store_member("w")  # the witness is back: the store keeps its quorum without A
    p.deployment.wait_store(60)
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    helpers.wait_done(p, PROJECT, PRI, "switchback", timeout=120)
    wait_leader(p, "r0", timeout=30)
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
