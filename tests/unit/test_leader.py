"""The control-plane leader election against a real etcd: one replica leads, another takes over
within the lease after the first is killed or cannot renew, two never lead at once, and a deposed
leader's writes are refused by etcd itself (fencing by revision)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pgcrdr.controlplane.leader import LEADER_KEY, Leader, LeaderElection, read_leader
from pgcrdr.controlplane.operations import OperationRunner
from pgcrdr.controlplane.store import EtcdStore, StoreFenced
from pgcrdr.etcdv3 import EtcdGateway, EtcdUnreachable
from tests.unit.test_store import P, service

TTL = 2


@pytest.fixture()
def prefix() -> str:
    return f"/pgcrdr-test/{uuid.uuid4().hex}/"


def replica(endpoints: list[str], prefix: str, name: str, ttl: int = TTL) -> LeaderElection:
    return LeaderElection(EtcdGateway(endpoints, timeout=1.0), prefix + LEADER_KEY,
                          Leader(name, f"http://{name}:25000"), ttl)


def campaign_until_leading(election: LeaderElection, timeout: float) -> float:
    """Step ``election`` as its thread would until it leads; returns how long that took."""
    start = time.monotonic()
    while not election.leading():
        assert time.monotonic() - start < timeout, f"{election.me.name} did not lead within {timeout}s"
        election.step()
        time.sleep(TTL / 3)
    return time.monotonic() - start


def test_one_replica_leads_and_the_other_follows_it(etcd_server, prefix):
    a, b = replica(etcd_server.endpoints, prefix, "ctl-a"), replica(etcd_server.endpoints, prefix, "ctl-b")
    try:
        assert a.step().startswith("ctl-a: won the leadership")
        assert a.leading()
        assert b.step() == "ctl-b: follows ctl-a"
        assert not b.leading() and b.fence() is None
        assert b.leader() == a.me == read_leader(a.gateway, a.key)
        assert a.step().startswith("ctl-a: leads (lease renewed")
        assert a.fence() == (a.key, read_leader_revision(a))
    finally:
        a.resign()
        b.resign()


def read_leader_revision(e: LeaderElection) -> int:
    kvs, _, _ = e.gateway.range(e.key)
    return kvs[0].mod_revision


def test_a_resigning_leader_hands_over_at_once(etcd_server, prefix):
    a, b = replica(etcd_server.endpoints, prefix, "ctl-a"), replica(etcd_server.endpoints, prefix, "ctl-b")
    try:
        a.step()
        b.step()
        a.resign()
        assert b.step().startswith("ctl-b: won the leadership")
    finally:
        b.resign()


def test_a_killed_leader_is_replaced_within_its_lease(etcd_server, prefix, tmp_path):
    """The first replica runs in a process of its own and is SIGKILLed while it leads."""
    ready = tmp_path / "leading"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.unit.test_leader import replica\n"
        f"e = replica({etcd_server.endpoints!r}, {prefix!r}, 'ctl-a')\n"
        "e.start()\n"
        "while not e.leading(): time.sleep(0.05)\n"
        f"Path({str(ready)!r}).write_text('1')\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    b = replica(etcd_server.endpoints, prefix, "ctl-b")
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the first replica never led"
            time.sleep(0.05)
        assert b.step() == "ctl-b: follows ctl-a"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        took = campaign_until_leading(b, timeout=TTL + 3)
        # its lease ends at most TTL after its last renewal; etcd's lessor revokes expired leases
        # within about 0.5 s more (measured here: 3.2-3.4 s in all); b's next campaign (every
        # TTL/3) then wins
        assert took <= TTL + TTL / 3 + 1.5, took
        assert read_leader(b.gateway, b.key) == b.me
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        b.resign()


def test_a_leader_that_cannot_renew_stops_before_another_can_lead(etcd_server, prefix, monkeypatch):
    a, b = replica(etcd_server.endpoints, prefix, "ctl-a"), replica(etcd_server.endpoints, prefix, "ctl-b")
    both: list[float] = []
    stop = threading.Event()

    def never_two() -> None:
        while not stop.is_set():
            if a.leading() and b.leading():
                both.append(time.monotonic())
            time.sleep(0.005)

    sampler = threading.Thread(target=never_two, daemon=True)
    sampler.start()
    try:
        a.step()
        assert a.leading()

        def cut_off(lease: int) -> int:
            raise EtcdUnreachable("partitioned (test)", ambiguous=False)

        monkeypatch.setattr(a.gateway, "lease_keepalive", cut_off)
        start = time.monotonic()
        said = []
        while not b.leading() and time.monotonic() - start < TTL + 3:
            said.append(a.step())
            b.step()
            time.sleep(0.1)
        assert b.leading() and not a.leading()
        assert any("still leading for" in s for s in said)
        assert any("lost the leadership: the lease could not be renewed" in s for s in said), said
        assert both == [], "two replicas believed they led at once"
    finally:
        stop.set()
        sampler.join(2)
        a.resign()
        b.resign()


def test_a_deposed_leaders_write_is_refused_by_etcd(etcd_server, prefix):
    """Fencing by revision: even while the old leader still believes it leads (its clock has not
    run out), etcd refuses its write once the key has another revision."""
    a, b = replica(etcd_server.endpoints, prefix, "ctl-a", ttl=30), replica(etcd_server.endpoints, prefix, "ctl-b")
    stale = None
    store = EtcdStore(etcd_server.endpoints, prefix=prefix, fence=lambda: stale or a.fence())
    try:
        a.step()
        store.add_service(service("pg-a", generation=0))  # written while a leads
        stale = a.fence()
        a.gateway.lease_revoke(a._lease)  # its key is gone behind its back (as on expiry)
        b.step()
        assert b.leading()
        with pytest.raises(StoreFenced, match="no longer leads"):
            store.add_service(service("pg-b", generation=0))
        assert store.get_service(P, "pg-b") is None and store.get_service(P, "pg-a") is not None
        stale = None
        a._drop()
        with pytest.raises(StoreFenced):  # and once it knows, nothing is even sent
            store.add_service(service("pg-b", generation=0))
    finally:
        store.close()
        a.resign()
        b.resign()


def test_a_replica_that_does_not_lead_advances_no_operation():
    class NoStore:
        def running_operations(self):  # pragma: no cover - must not be reached
            raise AssertionError("a follower read the operations to run them")

    runner = OperationRunner(NoStore(), {}, None, lambda s: s.cluster, leading=lambda: False)  # type: ignore[arg-type]
    runner.advance_all()
