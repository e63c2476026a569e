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

import httpx
import psycopg
import pytest

from pgcrdr.api.replica import LEADER_HEADER
from pgcrdr.platform import STORE_MEMBER_PID, pid_path, read_pid
from tests import helpers
from tests.helpers import Writer, WriterProbe, wait_for
from tests.lab_helpers import LabPlatform, lab_platform

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
