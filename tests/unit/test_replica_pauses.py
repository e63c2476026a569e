"""A planned move pauses the pooled Service URI of every control-plane replica (pause intents in a
real etcd, pgcrdr.controlplane.pauses): the leader's PAUSE step completes once every live replica
has paused; a replica whose PAUSE times out fails the step with every pooler resumed; a replica
that does not answer is named and not waited for; a replica resumes by itself at the deadline when
the leader is gone; a deposed leader pauses nobody."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from pgcrdr.agentapi.models import Endpoint
from pgcrdr.controlplane.leader import LEADER_KEY, Leader, LeaderElection
from pgcrdr.controlplane.pauses import SEEN_BOUND_S, CoordinatedEndpoints, PauseBoard, PauseFollower
from pgcrdr.controlplane.store import StoreFenced
from pgcrdr.endpoint.models import PauseTimeout
from pgcrdr.etcdv3 import EtcdGateway
from tests.helpers import wait_for

NAME = "pg-pair"
TTL = 2


class LocalPooler:
    """One replica's own pooled endpoint, as the EndpointManager's pause/repoint/resume see it."""

    def __init__(self, names=(NAME,)):
        self.paused = False
        self.target: str | None = "old-writer"
        self.open_transaction = False
        self.pauses = 0
        self._names = list(names)
        self.events: list[str] = []
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        return self._names

    def pause(self, name: str, timeout: float = 10.0) -> float:
        with self.lock:
            self.pauses += 1
        if self.open_transaction:
            time.sleep(timeout)
            raise PauseTimeout(f"PAUSE did not complete within {timeout:g}s (a transaction stayed open)")
        self.paused = True
        self.events.append("pause")
        return 0.001

    def repoint(self, name: str, target: Endpoint | None) -> float:
        self.target = target.host if target else None
        self.events.append(f"repoint {self.target}")
        return 0.001

    def resume(self, name: str) -> None:
        self.paused = False
        self.events.append("resume")


@pytest.fixture()
def prefix() -> str:
    return f"/pgcrdr-test/{uuid.uuid4().hex}/"


class Replica:
    def __init__(self, endpoints: list[str], prefix: str, name: str, fence=None):
        self.local = LocalPooler()
        self.term = f"{name}/t1"
        self.board = PauseBoard(EtcdGateway(endpoints, timeout=2.0), prefix, fence=fence)
        self.follower = PauseFollower(self.board, self.local, name, term=lambda: self.term, ttl_s=TTL)
        self.endpoints = CoordinatedEndpoints(self.local, self.board, self.follower, term=lambda: self.term)

    def __enter__(self) -> Replica:
        self.follower.start()
        return self

    def __exit__(self, *exc) -> None:
        self.follower.stop()
        self.board.gateway.close()


def live(board: PauseBoard, *names: str) -> None:
    wait_for("the replicas to say they are alive", lambda: set(names) <= board.live_replicas(), timeout=10,
             interval=0.05)


def test_every_replica_pauses_repoints_and_resumes_with_the_leader(etcd_server, prefix):
    with Replica(etcd_server.endpoints, prefix, "r0") as lead, Replica(etcd_server.endpoints, prefix, "r1") as other:
        live(lead.board, "r0", "r1")
        took = lead.endpoints.pause(NAME, 5.0)
        assert lead.local.paused and other.local.paused  # the step ends once both have paused
        assert "1 other replica(s) paused (r1)" in lead.endpoints.note(NAME)
        assert took < 5.0
        lead.endpoints.repoint(NAME, Endpoint(host="new-writer", port=5432))
        wait_for("r1 to repoint while paused", lambda: other.local.target == "new-writer", timeout=5, interval=0.02)
        assert other.local.paused
        lead.endpoints.resume(NAME)
        assert not lead.local.paused
        wait_for("r1 to resume", lambda: not other.local.paused, timeout=5, interval=0.02)
        assert other.local.events == ["pause", "repoint new-writer", "resume"]
        assert lead.local.events == ["pause", "repoint new-writer", "resume"]  # its own follower skipped its intents


def test_a_replica_whose_pause_times_out_fails_the_step_with_every_pooler_resumed(etcd_server, prefix):
    with Replica(etcd_server.endpoints, prefix, "r0") as lead, Replica(etcd_server.endpoints, prefix, "r1") as other:
        live(lead.board, "r0", "r1")
        other.local.open_transaction = True
        # r1's own PAUSE times out at the deadline, or the leader stops waiting for it then
        with pytest.raises(PauseTimeout, match="replica r1: (its )?PAUSE did not complete") as e:
            lead.endpoints.pause(NAME, 2.0)
        assert "every pooler was resumed" in str(e.value)
        assert not lead.local.paused and not other.local.paused


def test_a_replica_that_does_not_answer_is_named_and_not_waited_for(etcd_server, prefix):
    with Replica(etcd_server.endpoints, prefix, "r0") as lead:
        gw = EtcdGateway(etcd_server.endpoints)
        try:
            lease = gw.lease_grant(30)
            lead.board.register("r9", lease)  # alive by its lease, but it never reads an intent
            live(lead.board, "r0", "r9")
            t0 = time.monotonic()
            lead.endpoints.pause(NAME, 5.0)
            waited = time.monotonic() - t0
            assert lead.local.paused
            assert SEEN_BOUND_S <= waited < 5.0
            assert "not paused on r9" in lead.endpoints.note(NAME)
            lead.endpoints.resume(NAME)
        finally:
            gw.lease_revoke(lease)
            gw.close()


def test_a_replica_resumes_by_itself_at_the_deadline_when_the_leader_is_gone(etcd_server, prefix):
    with Replica(etcd_server.endpoints, prefix, "r0") as lead, Replica(etcd_server.endpoints, prefix, "r1") as other:
        live(lead.board, "r0", "r1")
        deadline = time.time() + 1.0
        lead.endpoints.pause(NAME, 1.0)
        assert other.local.paused
        # the leader dies here: nobody announces a resume; r1 holds its clients until the deadline
        wait_for("r1 to resume at the deadline", lambda: not other.local.paused, timeout=10, interval=0.02)
        assert time.time() >= deadline
        assert other.follower.applied(NAME) == "resumed"
        assert lead.local.paused  # (the leader's own pooler is its runner's: its watchdog resumes it)


def test_a_replica_that_starts_late_applies_a_pause_in_force_but_not_an_old_resume(etcd_server, prefix):
    with Replica(etcd_server.endpoints, prefix, "r0") as lead:
        live(lead.board, "r0")
        lead.endpoints.pause(NAME, 30.0)
        lead.endpoints.repoint(NAME, Endpoint(host="new-writer", port=5432))
        with Replica(etcd_server.endpoints, prefix, "r1") as late:
            wait_for("r1 to apply the pause in force", lambda: late.local.paused, timeout=5, interval=0.02)
            assert late.local.target == "new-writer"
            lead.endpoints.resume(NAME)
            wait_for("r1 to resume", lambda: not late.local.paused, timeout=5, interval=0.02)
        with Replica(etcd_server.endpoints, prefix, "r2") as later:
            time.sleep(0.5)  # it read the intents: a resume of a pause it never applied changes nothing
            assert later.local.events == []


def test_a_deposed_leader_pauses_nobody(etcd_server, prefix):
    election = LeaderElection(EtcdGateway(etcd_server.endpoints, timeout=1.0), prefix + LEADER_KEY,
                              Leader("r0", "http://r0:1"), TTL)
    election.step()
    assert election.leading()
    with Replica(etcd_server.endpoints, prefix, "r0", fence=election.fence) as lead, \
            Replica(etcd_server.endpoints, prefix, "r1") as other:
        live(lead.board, "r0", "r1")
        lead.endpoints.pause(NAME, 5.0)
        lead.endpoints.resume(NAME)
        wait_for("r1 to resume", lambda: not other.local.paused, timeout=5, interval=0.02)
        election.gateway.lease_revoke(election._lease or 0)  # the lease is gone behind its back
        other_election = LeaderElection(EtcdGateway(etcd_server.endpoints, timeout=1.0), prefix + LEADER_KEY,
                                        Leader("r1", "http://r1:1"), TTL)
        other_election.step()
        assert other_election.leading()
        with pytest.raises(StoreFenced):
            lead.endpoints.pause(NAME, 5.0)  # its clock still says it leads; etcd refuses the intent
        assert not lead.local.paused and not other.local.paused
        other_election.resign()
    election.resign()
