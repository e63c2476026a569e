"""The operation runner against fake region agents and a fake pooler: every step of a planned
switch and of a failover x every way a call can go wrong (timeout, refused connection, 409, 5xx,
lost answer), short (within the pause window) and long (past it). Whatever happens, the
operation ends, never with two writers, and with exactly one writer that the records and the
Service URI agree on; pooled writes are never left held."""

from __future__ import annotations

import time

import pytest

from pgcrdr.agentapi.models import ClusterStatus, Endpoint
from pgcrdr.controlplane.operations import OperationRunner
from pgcrdr.controlplane.steps import Phase, StepRefused, Transient, decide_on_error
from tests.unit.fake_region import FAULT_KINDS, FakeAgent, FakeCluster, FakeEndpoints, Fault, World

P = "/v1/project/pgcrdr"
EU, US = "local-europe-west1", "local-us-east1"
PAUSE_DEADLINE = 0.3
RETRY_BOUND = 0.6
LONG = 1.0  # past the pause window and the retry bound: the fault outlasts what may be waited
SHORT = 0.05


def _create(api, name, cloud, dr_for=None):
    body = {"service_name": name, "service_type": "pg", "plan": "startup-4", "cloud": cloud, "user_config": {}}
    if dr_for:
        body["service_integrations"] = [{"integration_type": "disaster_recovery", "source_service": dr_for}]
    r = api.post(f"{P}/service", json=body)
    assert r.status_code == 200, r.text


def _set_running(api, name, standby):
    svc = api.store.get_service("pgcrdr", name)
    ep = Endpoint(host=svc.cluster, port=1)  # the endpoint's host names the cluster it reaches
    status = ClusterStatus(cluster=svc.cluster, region=svc.cloud, ready=True, standby=standby, primary=ep,
                           replica=ep, generation=99)
    api.store.update_service("pgcrdr", name, lambda cur: cur.model_copy(
        update={"state": "RUNNING", "ever_ready": True, "status": status, "applied_generation": cur.generation}))


class Rig:
    """A pair (pg-a in EU active, pg-b in US passive) on a real store, fake regions, a runner."""

    def __init__(self, api):
        self.api, self.store = api, api.store
        _create(api, "pg-a", EU)
        _create(api, "pg-b", US, dr_for="pg-a")
        _set_running(api, "pg-a", standby=False)
        _set_running(api, "pg-b", standby=True)
        for op in self.store.running_operations():  # the copy is built: its setup is over
            op.state = "done"
            self.store.put_operation(op)
        self.a = self.store.get_service("pgcrdr", "pg-a").cluster
        self.b = self.store.get_service("pgcrdr", "pg-b").cluster
        self.world = World()
        self.world.clusters[self.a] = FakeCluster(self.a, writer=True, lsn=0x3000100)
        self.world.clusters[self.b] = FakeCluster(self.b, writer=False, received=0x3000000)
        self.world.current_step = self.current_step
        self.agents = {EU: FakeAgent(self.world, EU), US: FakeAgent(self.world, US)}
        self.endpoints = FakeEndpoints(self.world)
        self.endpoints.target = self.a
        self.runner = OperationRunner(self.store, self.agents, self.endpoints, lambda svc: "ep",  # type: ignore[arg-type]
                                      pause_deadline_s=PAUSE_DEADLINE, retry_bound_s=RETRY_BOUND)

    def current_step(self) -> str | None:
        ops = self.store.running_operations()
        if not ops:
            return None
        return next((s.name for s in ops[0].steps if s.state in ("pending", "running")), None)

    def request(self, name, role):
        r = self.api.put(f"{P}/service/{name}", json={"disaster_recovery_role": role, "plan": "startup-4",
                                                     "user_config": {}})
        assert r.status_code == 200, r.text

    def observe(self) -> None:
        """What the reconciler would record: each region applied its spec; standby or writer."""
        for name in ("pg-a", "pg-b"):
            def change(cur):
                c = self.world.clusters[cur.cluster]
                st = cur.status.model_copy(update={"generation": cur.generation, "standby": not c.writer})
                return cur.model_copy(update={"status": st, "status_time": time.time()})
            self.store.update_service("pgcrdr", name, change)

    def drive(self, limit: float = 10.0) -> dict:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.store.running_operations():
                ops = self.store.list_operations("pgcrdr", "pg-a")
                return ops[-1].model_dump()
            self.runner._not_before.clear()  # no backoff waits in unit tests
            self.runner.advance_all(parallel=False)
            self.observe()
            assert not self.world.violations, self.world.violations
            time.sleep(0.005)
        op = self.store.running_operations()[0]
        raise AssertionError(f"operation did not end: {[(s.name, s.state, s.detail) for s in op.steps]}")

    def assert_one_writer(self, op: dict) -> str:
        writers = self.world.writers()
        assert len(writers) == 1, (writers, op["state"], op["message"])
        writer = writers[0]
        a, b = self.store.get_service("pgcrdr", "pg-a"), self.store.get_service("pgcrdr", "pg-b")
        recorded = a if a.dr_role == "active" else b
        assert recorded.cluster == writer, (op["state"], op["message"], [(s["name"], s["state"], s["detail"])
                                                                          for s in op["steps"]])
        assert self.endpoints.target == writer
        assert not self.endpoints.paused, "pooled writes left held"
        assert {a.state, b.state} <= {"RUNNING", "POWEROFF"}, (a.state, b.state)
        return writer


SWITCH_CALLS = [
    ("precheck", "lsn", "a"), ("precheck", "lsn", "b"), ("checkpoint", "checkpoint", "a"),
    ("demote", "demote", "a"), ("confirm_lsn", "lsn", "b"), ("promote", "promote", "b"),
    ("records", "put_cluster", None),
]


@pytest.mark.parametrize("duration", [SHORT, LONG], ids=["short", "long"])
@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("step,method,which", SWITCH_CALLS, ids=[f"{s}-{m}-{w}" for s, m, w in SWITCH_CALLS])
def test_switchover_fault_ends_with_exactly_one_writer(api, step, method, which, kind, duration):
    rig = Rig(api)
    cluster = {"a": rig.a, "b": rig.b, None: None}[which]
    region = US if which == "b" else EU
    agents = [rig.agents[region]] if which else list(rig.agents.values())
    for agent in agents:
        agent.faults.append(Fault(step, method, cluster, kind, duration))
    rig.request("pg-b", "active")
    op = rig.drive()
    writer = rig.assert_one_writer(op)
    assert op["state"] in ("done", "undone", "failed")
    if op["state"] == "done":
        assert writer == rig.b
    else:
        assert writer == rig.a and op["message"]
    if duration == SHORT and kind in ("timeout", "refused", "5xx", "lost"):
        assert op["state"] == "done", op["message"]  # a short fault is ridden out by retries
    if op["write_pause_s"] is not None:
        assert op["write_pause_s"] <= PAUSE_DEADLINE + 1.5  # a bound, not a timing: far below LONG faults


@pytest.mark.parametrize("kind", ["timeout", "refused", "5xx"])
@pytest.mark.parametrize("method", ["pause", "repoint", "resume"])
def test_switchover_endpoint_fault_ends_with_exactly_one_writer(api, method, kind):
    rig = Rig(api)
    step = {"pause": "pause", "repoint": "repoint", "resume": "resume"}[method]
    rig.endpoints.faults.append(Fault(step, method, "endpoint", kind, LONG))
    rig.request("pg-b", "active")
    op = rig.drive()
    rig.assert_one_writer(op)


def test_target_stalled_after_demote_is_undone_at_once(api):
    """Item 1 of the issue: the recovery region's agent stops answering while demote runs.
    Before: failed at confirm_lsn with nobody writable. Now: undone within the pause window,
    the old writer takes writes again without waiting for the stalled agent."""
    rig = Rig(api)
    rig.agents[US].faults.append(Fault("confirm_lsn", "lsn", rig.b, "timeout", 30.0))
    rig.request("pg-b", "active")
    t0 = time.monotonic()
    op = rig.drive()
    assert op["state"] == "undone" and "stays the writer" in op["message"]
    assert rig.assert_one_writer(op) == rig.a
    assert time.monotonic() - t0 < 10.0  # the stall lasts 30 s: undone long before
    assert [s["name"] for s in op["steps"]][-3:] == ["undo_settle", "undo_promote_source", "undo_resume"]


def test_promote_answer_lost_past_the_window_completes_the_move(api):
    """The target promoted but its answer was lost and its agent then stalled past the window:
    the pooler is resumed at the deadline, nothing is undone while the target cannot be asked,
    and the move completes once it answers (it says it ran the promote)."""
    rig = Rig(api)
    rig.agents[US].faults.append(Fault("promote", "promote", rig.b, "lost", 0.05))
    rig.agents[US].faults.append(Fault("undo_settle", "cancel_request", rig.b, "timeout", LONG))
    rig.request("pg-b", "active")
    op = rig.drive()
    assert op["state"] == "done", op["message"]
    assert rig.assert_one_writer(op) == rig.b


def test_open_transaction_undoes_the_switchover_naming_the_session(api):
    rig = Rig(api)
    rig.endpoints.open_transaction = True
    rig.request("pg-b", "active")
    op = rig.drive()
    assert op["state"] == "undone"
    assert "pid 4242" in op["message"] and "holder" in op["message"]
    assert rig.assert_one_writer(op) == rig.a
    assert rig.endpoints.pauses == 1  # not retried every tick
    assert op["write_pause_s"] <= PAUSE_DEADLINE + 1.0


FAILOVER_CALLS = [("record_lsn", "lsn", "b"), ("promote", "promote", "b"), ("records", "put_cluster", "b")]


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("step,method,which", FAILOVER_CALLS, ids=[f"{s}-{m}" for s, m, _ in FAILOVER_CALLS])
def test_failover_fault_ends_with_the_recovery_writing(api, step, method, which, kind):
    """The primary's region is down; the recovery's agent misbehaves at one step for a while
    (within the retry bound): the failover still ends with the recovery as the one writer."""
    rig = Rig(api)
    rig.agents[EU].down = True
    rig.world.clusters[rig.a].writer = False  # the region died with its writer
    rig.agents[US].faults.append(Fault(step, method, rig.b, kind, RETRY_BOUND / 2))
    rig.request("pg-a", "failed")
    op = rig.drive()
    assert op["state"] == "done", op["message"]
    assert rig.assert_one_writer(op) == rig.b
    assert op["data_loss"]["known"] is False and op["data_loss"]["bytes"] is None


def test_failover_with_the_recovery_unreachable_fails_changing_nothing(api):
    rig = Rig(api)
    rig.agents[EU].down = True
    rig.agents[US].down = True
    rig.request("pg-a", "failed")
    op = rig.drive()
    assert op["state"] == "failed" and "cannot be reached" in op["message"] and "nothing was changed" in op["message"]
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    assert (a.dr_role, b.dr_role) == ("active", "passive")


def test_data_given_up_is_unknown_when_the_primary_cannot_be_asked(api):
    """Item 6: a stale last-seen LSN is not the loss; it gives a lower bound and its age."""
    rig = Rig(api)
    a = rig.store.get_service("pgcrdr", "pg-a")
    from pgcrdr.agentapi.models import LsnInfo

    st = a.status.model_copy(update={"lsn": LsnInfo(node="x", in_recovery=False, current_lsn="0/3000200")})
    rig.store.update_service("pgcrdr", "pg-a", lambda cur: cur.model_copy(
        update={"status": st, "status_time": time.time() - 7}))
    rig.agents[EU].down = True
    rig.world.clusters[rig.a].writer = False
    rig.request("pg-a", "failed")
    op = rig.drive()
    loss = op["data_loss"]
    assert loss["bytes"] is None and loss["known"] is False
    assert loss["lower_bound_bytes"] == 0x200 and loss["primary_last_seen_lsn"] == "0/3000200"
    assert 6 <= loss["primary_last_seen_age_s"] < 60
    assert "unknown" in loss["note"]


def test_data_given_up_is_exact_when_the_primary_answers(api):
    rig = Rig(api)
    rig.request("pg-a", "failed")
    op = rig.drive()
    assert op["data_loss"]["known"] is True and op["data_loss"]["bytes"] == 0x100


@pytest.mark.parametrize("phase,error,failing,window,expected", [
    (Phase.BEFORE, Transient("x"), 0.0, None, "retry"),
    (Phase.BEFORE, Transient("x"), 31.0, None, "fail"),
    (Phase.BEFORE, StepRefused("x"), 0.0, None, "fail"),
    (Phase.HELD, Transient("x"), 0.0, 1.0, "retry"),
    (Phase.HELD, Transient("x"), 0.0, -0.1, "undo"),
    (Phase.MOVING, StepRefused("x"), 0.0, 1.0, "undo"),
    (Phase.COMMITTED, StepRefused("x"), 100.0, -5.0, "wait"),
    (Phase.COMMITTED, Transient("x"), 1e6, -5.0, "retry"),
    (Phase.UNDOING, Transient("x"), 1e6, None, "retry"),
])
def test_error_decisions_by_phase(phase, error, failing, window, expected):
    assert decide_on_error(phase, error, failing, 30.0, window).action == expected


# --- a pair left without a writer is repaired ---------------------------------------------------

def test_pair_without_writer_is_seen_only_when_the_active_runs_as_a_standby_cluster(api):
    from pgcrdr.controlplane.decide import pair_without_writer

    rig = Rig(api)
    rig.observe()
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    now = time.time()
    assert pair_without_writer(a, b, now) is None  # a writes (no primary node listed: not judged)
    rig.world.clusters[rig.a].writer = False  # a demoted and never promoted back
    rig.observe()
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    assert "runs it as a standby cluster" in pair_without_writer(a, b, now)
    assert pair_without_writer(a, b, now + 60) is None  # a stale observation proves nothing
    newer = a.model_copy(update={"generation": a.status.generation + 1})
    assert pair_without_writer(newer, b, now) is None  # seen before the region applied the spec


def test_repair_promotes_the_recorded_active_when_both_are_standbys(api):
    from pgcrdr.controlplane.reconciler import start_repair

    rig = Rig(api)
    rig.world.clusters[rig.a].writer = False
    rig.world.clusters[rig.a].received = rig.world.clusters[rig.a].lsn  # demoted: it holds its own WAL
    rig.world.clusters[rig.b].received = rig.world.clusters[rig.a].lsn
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    op = start_repair(rig.store, a, b, "a runs as a standby cluster")
    assert op is not None and rig.store.get_service("pgcrdr", "pg-a").state == "REBALANCING"
    assert start_repair(rig.store, a, b, "again") is None  # one operation per pair
    rig.endpoints.target = None
    done = rig.drive()
    assert done["kind"] == "repair" and done["state"] == "done", done["message"]
    assert rig.assert_one_writer(done) == rig.a


def test_repair_follows_the_side_that_takes_writes(api):
    """The records say a is active but b writes (e.g. a promote whose outcome was never
    recorded): the records and the Service URI follow b; a is not promoted."""
    from pgcrdr.controlplane.reconciler import start_repair

    rig = Rig(api)
    rig.world.clusters[rig.a].writer = False
    rig.world.clusters[rig.b].writer = True
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    start_repair(rig.store, a, b, "b writes")
    done = rig.drive()
    assert done["state"] == "done", done["message"]
    assert rig.assert_one_writer(done) == rig.b


def test_repair_waits_while_a_side_cannot_be_asked_and_gives_way_to_a_failover(api):
    from pgcrdr.controlplane.reconciler import start_repair

    rig = Rig(api)
    rig.world.clusters[rig.a].writer = False
    rig.agents[US].down = True
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    start_repair(rig.store, a, b, "a runs as a standby cluster")
    for _ in range(5):
        rig.runner._not_before.clear()
        rig.runner.advance_all(parallel=False)
    assert rig.world.writers() == []  # nothing chosen while pg-b cannot be asked
    rig.agents[US].down = False
    rig.agents[EU].down = True
    rig.request("pg-a", "failed")  # the user's failover supersedes the waiting repair
    done = rig.drive()
    assert done["kind"] == "failover" and done["state"] == "done", done["message"]
    assert rig.assert_one_writer(done) == rig.b
    repair = next(o for o in rig.store.list_operations("pgcrdr", "pg-a") if o.kind == "repair")
    assert repair.state == "failed" and "superseded" in repair.message


def test_operations_of_different_pairs_do_not_wait_for_each_other(api):
    """A pair whose agent call takes 6 s does not delay another pair's switchover."""
    rig = Rig(api)
    _create(api, "pg-c", EU)
    _create(api, "pg-d", US, dr_for="pg-c")
    _set_running(api, "pg-c", standby=False)
    _set_running(api, "pg-d", standby=True)
    for op in rig.store.running_operations():
        op.state = "done"
        rig.store.put_operation(op)
    c, d = rig.store.get_service("pgcrdr", "pg-c").cluster, rig.store.get_service("pgcrdr", "pg-d").cluster
    rig.world.clusters[c] = FakeCluster(c, writer=True, lsn=0x3000100)
    rig.world.clusters[d] = FakeCluster(d, writer=False, received=0x3000100)
    slow_lsn = rig.agents[EU].lsn

    def slow(cluster, timeout=None):
        if cluster == rig.a:
            time.sleep(6.0)
        return slow_lsn(cluster, timeout)
    rig.agents[EU].lsn = slow  # type: ignore[method-assign]
    rig.runner.pause_deadline_s = 5.0
    rig.request("pg-b", "active")
    rig.request("pg-d", "active")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 15:
        rig.runner.advance_all(parallel=True)
        ops = {o.pair: o for o in rig.store.list_operations("pgcrdr") if o.kind == "switchover"}
        if ops.get("pg-c") and ops["pg-c"].step("promote").state == "done":
            break
        time.sleep(0.02)
    took = time.monotonic() - t0
    rig.runner.wait_idle(15)
    assert took < 4.0, f"pg-c's switchover waited {took:.1f}s behind pg-a's 6 s call"


def test_pooled_writes_are_resumed_at_the_deadline_even_while_a_call_blocks(api):
    """The watchdog (the reconciler's thread) resumes the pooler once the pause deadline has
    passed, while the operation's own thread is still blocked in an agent call."""
    rig = Rig(api)
    promote = rig.agents[US].promote

    def blocking(cluster, req):
        time.sleep(4.0)
        return promote(cluster, req)
    rig.agents[US].promote = blocking  # type: ignore[method-assign]
    rig.request("pg-b", "active")
    t0 = time.monotonic()
    held_until = None
    while time.monotonic() - t0 < 10:
        rig.runner.advance_all(parallel=True)
        rig.runner.enforce_deadlines()
        rig.observe()
        if held_until is None and rig.endpoints.pauses and not rig.endpoints.paused:
            held_until = time.monotonic() - t0
        if not rig.store.running_operations():
            break
        time.sleep(0.02)
    rig.runner.wait_idle(10)
    # resumed at the deadline, long before the 4 s call returned
    assert held_until is not None and held_until < PAUSE_DEADLINE + 2.5, held_until
    op = rig.store.list_operations("pgcrdr", "pg-a")[-1]
    assert op.state in ("done", "undone")
    rig.assert_one_writer(op.model_dump())


def test_the_reconciler_starts_a_repair_after_the_grace_period(api, tmp_path):
    from pgcrdr.config import Settings
    from pgcrdr.controlplane.reconciler import NO_WRITER_GRACE_S, Reconciler

    rig = Rig(api)
    rig.world.clusters[rig.a].writer = False
    rig.observe()
    rec = Reconciler(rig.store, Settings.from_env(home=tmp_path / "h"), "token")
    try:
        rec.check_writers(now=100.0)
        assert not rig.store.running_operations()  # seen once: within the grace period
        rec.check_writers(now=100.0 + NO_WRITER_GRACE_S + 0.1)
        ops = rig.store.running_operations()
        assert [o.kind for o in ops] == ["repair"] and "standby cluster" in (ops[0].message or "")
        rec.check_writers(now=200.0)  # one operation per pair
        assert len(rig.store.running_operations()) == 1
    finally:
        rec.stop()


def test_a_restart_while_pause_waits_frees_pooled_clients_and_undoes_the_move(api, tmp_path):
    from pgcrdr.config import Settings
    from pgcrdr.controlplane.reconciler import Reconciler

    rig = Rig(api)
    rig.request("pg-b", "active")
    op = rig.store.running_operations()[0]
    for s in op.steps:  # as a control plane killed while PAUSE waited leaves it
        if s.name in ("precheck", "checkpoint"):
            s.state = "done"
    op.step("pause").state = "running"
    op.data["pause_started"] = time.time()
    rig.store.put_operation(op)
    rig.endpoints.paused = True
    rec = Reconciler(rig.store, Settings.from_env(home=tmp_path / "h"), "token")
    rec.runner, rec.endpoints = rig.runner, rig.endpoints
    try:
        rec.recover_pauses()
        assert not rig.endpoints.paused  # freed at the first tick, before any step runs
        done = rig.drive()
    finally:
        rec.stop()
    assert done["state"] == "undone" and "restarted while PAUSE waited" in done["message"]
    assert "pid 4242" in done["message"]
    assert rig.endpoints.pauses == 0  # not paused a second time
    rig.assert_one_writer(done)


def _with_lease(rig: Rig, holder, ttl: float = 0.3) -> None:  # noqa: ANN001
    rig.runner.lease_holder = holder
    rig.runner.writer_lease_ttl_s = ttl


def test_failover_of_an_unreachable_primary_waits_for_its_writer_lease_to_expire(api):
    """With writer leases, the recovery is promoted only once the unreachable primary's region no
    longer holds its lease (its agent has stopped its writers); the wait is in the report."""
    rig = Rig(api)
    rig.agents[EU].down = True
    released_at = time.monotonic() + 0.2
    asked: list[str] = []

    def holder(cloud: str):
        asked.append(cloud)
        if time.monotonic() < released_at:
            return {"holder": "agent-eu"}
        rig.world.clusters[rig.a].writer = False  # its agent stopped the writer before the lease went
        return None

    _with_lease(rig, holder)
    rig.request("pg-a", "failed")
    op = rig.drive()
    assert op["state"] == "done", op["message"]
    assert rig.assert_one_writer(op) == rig.b and set(asked) == {EU}
    assert op["data_loss"]["writer_lease_wait_s"] >= 0.15


@pytest.mark.parametrize("holder", [lambda cloud: {"holder": "agent-eu"}, lambda cloud: 1 / 0],
                         ids=["held", "store-silent"])
def test_failover_changes_nothing_while_the_primary_region_keeps_its_writer_lease(api, holder):
    """The region's agent still renews its lease (alive, reaching the global store) or the lease
    cannot be read: promoting could make two writers; past twice the TTL nothing was changed."""
    rig = Rig(api)
    rig.agents[EU].down = True
    rig.world.clusters[rig.a].writer = True  # cut off from us, still writing inside its region
    _with_lease(rig, holder, ttl=0.1)
    rig.request("pg-a", "failed")
    op = rig.drive()
    assert op["state"] == "failed" and "writer lease" in op["message"] and "nothing was changed" in op["message"]
    a, b = rig.store.get_service("pgcrdr", "pg-a"), rig.store.get_service("pgcrdr", "pg-b")
    assert (a.dr_role, b.dr_role) == ("active", "passive") and not rig.world.clusters[rig.b].writer


def test_a_deposed_leader_stops_at_the_next_step_and_the_next_leader_completes_the_move(api):
    """Control-plane replicas: the leader's lease runs out right after ``demote``; it takes no
    further step, and the replica that leads next resumes the switchover from its persisted steps."""
    rig = Rig(api)
    old_leads = [True]
    rig.runner.leading = lambda: old_leads[0]
    demote = rig.runner.step_demote

    def demote_then_lose_the_lease(op):  # noqa: ANN001, ANN202
        said = demote(op)
        old_leads[0] = False
        return said

    rig.runner.step_demote = demote_then_lose_the_lease  # type: ignore[method-assign]
    rig.request("pg-b", "active")
    rig.runner.advance_all(parallel=False)
    op = rig.store.running_operations()[0]
    states = {s.name: s.state for s in op.steps}
    assert states["demote"] == "done" and states["confirm_lsn"] == "pending", states
    rig.runner.advance_all(parallel=False)  # deposed: nothing more
    assert {s.name: s.state for s in rig.store.running_operations()[0].steps} == states
    rig.runner = OperationRunner(rig.store, rig.agents, rig.endpoints, lambda svc: "ep",  # type: ignore[arg-type]
                                 pause_deadline_s=PAUSE_DEADLINE, retry_bound_s=RETRY_BOUND)
    done = rig.drive()
    assert done["state"] == "done", done["message"]
    assert rig.assert_one_writer(done) == rig.b


@pytest.mark.parametrize("lost_after", ["pause", "demote", "confirm_lsn"])
def test_a_leader_lost_longer_than_the_pause_window_does_not_undo_the_move(api, lost_after):
    """The leader dies right after ``lost_after`` and the next one leads only once the pause window
    is over: before the demote it pauses again (a fresh window), after it the move completes
    without holding pooled writes. Either way the switchover ends done, with one writer."""
    rig = Rig(api)
    old_leads = [True]
    rig.runner.leading = lambda: old_leads[0]
    step = getattr(rig.runner, f"step_{lost_after}")

    def then_die(op):  # noqa: ANN001, ANN202
        said = step(op)
        old_leads[0] = False
        return said

    setattr(rig.runner, f"step_{lost_after}", then_die)
    rig.request("pg-b", "active")
    rig.runner.advance_all(parallel=False)
    states = {s.name: s.state for s in rig.store.running_operations()[0].steps}
    assert states[lost_after] == "done" and "pending" in states.values(), states
    time.sleep(PAUSE_DEADLINE + 0.1)  # no leader for longer than the window
    rig.runner = OperationRunner(rig.store, rig.agents, rig.endpoints, lambda svc: "ep",  # type: ignore[arg-type]
                                 pause_deadline_s=PAUSE_DEADLINE, retry_bound_s=RETRY_BOUND)
    done = rig.drive()
    assert done["state"] == "done", (done["message"], [(s["name"], s["state"], s["detail"]) for s in done["steps"]])
    assert rig.assert_one_writer(done) == rig.b
    assert rig.endpoints.pauses == (2 if lost_after == "pause" else 1)
    said = " ".join(s["detail"] or "" for s in done["steps"])
    assert ("paused again" if lost_after == "pause" else "without holding pooled writes") in said
