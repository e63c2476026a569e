"""Carries CRDR operations out, step by step, persisting each step before and after it runs.

A control plane killed at any point resumes at the first step not marked done; every step is
idempotent (re-running a finished PAUSE, demote, promote or repoint changes nothing). The order
of the planned switch is the one measured in architecture.md: hold the pooled endpoint,
checkpoint, demote the writer cleanly, *prove* the target holds the writer's final LSN, and only
then promote it — so at no moment are there two writers, and nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.agentapi.models import (
    DemoteRequest,
    Endpoint,
    FenceRequest,
    LsnInfo,
    PreserveRequest,
    PromoteRequest,
    REBUILD_SOURCES,
    RebuildRequest,
    StandbySource,
)
from pgcrdr.agentapi.sessions import describe_sessions
from pgcrdr.controlplane.crdr import slot_for, standby_source_for
from pgcrdr.controlplane.decide import cluster_spec
from pgcrdr.controlplane.lag import lsn_int, pair_lag
from pgcrdr.controlplane.records import OperationRecord, OperationState, ServiceRecord, StepRecord
from pgcrdr.controlplane.services import now_rfc3339
from pgcrdr.controlplane.steps import (
    STEP_PHASE,
    Fail,
    Phase,
    StepRefused,
    Transient,
    Unsafe,
    Wait,
    backoff,
    classify,
    decide_on_error,
)
from pgcrdr.controlplane.store import Store, StoreFenced, Tx
from pgcrdr.endpoint.models import EndpointError, PauseTimeout

log = logging.getLogger("pgcrdr.operations")

MAX_LAG_BYTES = 64 * 1024 * 1024  # refuse a planned switch when the target is further behind
CONFIRM_TIMEOUT_S = 10.0  # confirm_lsn outside a pause window (no pooled endpoint)
IN_SYNC_LAG_BYTES = 16 * 1024 * 1024  # a rebuilt passive side is "in sync" this close to the writer
# Bounds of single agent calls: a region that does not answer within them is retried (steps.py).
CALL_TIMEOUT_S = 5.0
CHECKPOINT_TIMEOUT_S = 60.0  # a CHECKPOINT under load writes every dirty buffer
PRIMARY_PROBE_TIMEOUT_S = 2.0  # failover: the primary's region is probably gone
# failover: a primary whose agent does not even accept a connection within this is unreachable
# (its region is down or cut off); the fence is then recorded, not sent (see step_fence)
PRIMARY_CONNECT_TIMEOUT_S = 1.0
DEMOTE_TIMEOUT_S = 30.0  # demote outside a pause window
PROMOTE_TIMEOUT_S = 10.0
PASSIVE_CATCH_UP_BOUND_S = 300.0  # after a planned move: the old writer rejoining as a standby
UNDO_STEPS = ("undo_settle", "undo_promote_source", "undo_resume")


class Reroute(Exception):
    """The step list was changed (an undo turned into completing the move): run on."""



def _fault_point(kind: str, step: str) -> None:
    """Crash drill: ``PGCRDR_CRASH_AFTER=kind:step`` SIGKILLs the control plane right after that
    step is persisted (tests prove every operation resumes from any point)."""
    if os.environ.get("PGCRDR_CRASH_AFTER") == f"{kind}:{step}":
        log.warning("crash drill: killing the control plane after %s:%s", kind, step)
        os.kill(os.getpid(), signal.SIGKILL)


class Endpoints(Protocol):
    def pause(self, name: str, timeout: float) -> float: ...
    def repoint(self, name: str, target: Endpoint) -> None: ...
    def resume(self, name: str) -> None: ...


class OperationRunner:
    """Steps every running operation; operations of different pairs run in parallel, each in
    its own short-lived thread, so a slow call for one pair never delays another."""

    def __init__(self, store: Store, agents: dict[str, AgentClient], endpoints: Endpoints | None,
                 endpoint_name: Callable[[ServiceRecord], str], pause_deadline_s: float = 5.0,
                 retry_bound_s: float = 30.0, lease_holder: Callable[[str], dict[str, Any] | None] | None = None,
                 writer_lease_ttl_s: float = 10.0, leading: Callable[[], bool] = lambda: True,
                 replica: str = "local"):
        """``leading``: whether this replica leads now; when it stops leading, no step starts.
        ``replica``: this control plane's name in its terms (``term``)."""
        self.store = store
        self.leading = leading
        self.replica = replica
        self.term = ""
        self.begin_term()
        # Who holds a region's writer lease (pgcrdr.writer_lease); None: the deployment has no
        # writer leases (the embedded default, whose store is SQLite).
        self.lease_holder = lease_holder
        self.writer_lease_ttl_s = writer_lease_ttl_s
        self.agents = agents
        self.endpoints = endpoints
        self.endpoint_name = endpoint_name
        self.pause_deadline_s = pause_deadline_s
        self.retry_bound_s = retry_bound_s
        self._guard = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._not_before: dict[str, float] = {}  # operation id -> monotonic time of its next try
        # operation id -> when the watchdog resumed its pooler (epoch s); read by its own thread
        self._resumed_by_watchdog: dict[str, float] = {}

    def begin_term(self) -> None:
        """A new term: this process started, or this replica (again) became the leader. An
        operation last stepped in another term had its leader lost (``_guard_window``)."""
        self.term = f"{self.replica}/{uuid.uuid4().hex[:12]}"

    # --- driving --------------------------------------------------------------------------
    def advance_all(self, parallel: bool = True) -> None:
        """Give every running operation a turn: in a thread of its own (``parallel``), or one
        after the other in this thread (tests)."""
        if not self.leading():
            return
        for op in self.store.running_operations():
            if time.monotonic() < self._not_before.get(op.operation_id, 0.0):
                continue  # backing off after a fault
            if not parallel:
                self._advance_logged(op.operation_id)
                continue
            with self._guard:
                t = self._threads.get(op.pair)
                if t is not None and t.is_alive():
                    continue  # this pair's operation is still stepping
                t = threading.Thread(target=self._advance_logged, args=(op.operation_id,),
                                     name=f"op-{op.pair}", daemon=True)
                self._threads[op.pair] = t
                t.start()

    def enforce_deadlines(self) -> list[str]:
        """Watchdog, run by the reconciler's own thread: whatever an operation's thread is
        blocked on (an agent call that does not answer), its pooler is resumed once its pause
        deadline has passed. The operation's thread records it and undoes the move when it can
        still be undone. Returns the operations concerned."""
        out = []
        for op in self.store.running_operations():
            left = self.window_left(op)
            if left is None or left > 0 or op.operation_id in self._resumed_by_watchdog:
                continue
            try:
                self._endpoint(op, "resume")
            except Exception as exc:  # noqa: BLE001 - tried again next tick
                log.warning("%s %s: watchdog resume failed: %s", op.kind, op.operation_id, exc)
                continue
            self._resumed_by_watchdog[op.operation_id] = time.time()
            log.warning("%s %s: pause deadline passed while a step was blocked: pooler resumed", op.kind,
                        op.operation_id)
            out.append(op.operation_id)
        return out

    def wait_idle(self, timeout: float) -> bool:
        """Wait for every operation thread to finish its turn (shutdown, tests)."""
        deadline = time.monotonic() + timeout
        with self._guard:
            threads = list(self._threads.values())
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _advance_logged(self, operation_id: str) -> None:
        op = self.store.get_operation(operation_id)
        if op is None or op.state != "running":
            return
        try:
            said = self.advance(op)
            log.debug("%s", said)
        except StoreFenced as exc:
            log.warning("%s %s: %s", op.kind, op.operation_id, exc)
        except Exception:  # one broken operation must not stop the others; it is logged
            log.exception("operation %s (%s) crashed a step", op.operation_id, op.kind)
            self._not_before[op.operation_id] = time.monotonic() + 1.0

    def window_left(self, op: OperationRecord, now: float | None = None) -> float | None:
        """Seconds left of the window in which this operation may hold pooled writes (None
        when it holds none)."""
        started = op.data.get("pause_started")
        if started is None or op.data.get("resumed") is not None:
            return None
        return started + self.pause_deadline_s - (time.time() if now is None else now)

    def advance(self, op: OperationRecord) -> str:
        """Run steps until one has to wait or the operation ends; returns a sentence."""
        while True:
            if not self.leading():
                return f"{op.kind} {op.operation_id}: this replica no longer leads; the leader goes on from here"
            stored = self.store.get_operation(op.operation_id)
            if stored is None or stored.state != "running":
                return f"{op.kind} {op.operation_id} ended meanwhile ({stored.state if stored else 'deleted'})"
            lost = op.data.get("term") not in (None, self.term)
            op.data["term"] = self.term  # persisted with the next write of the operation
            self._guard_window(op, leader_lost=lost)
            step = next((s for s in op.steps if s.state in ("pending", "running")), None)
            if step is None:
                if op.data.get("undo"):
                    return self._finish(op, "undone", f"{op.kind} undone, {op.source} stays the writer: "
                                                      f"{op.data['undo']}")
                return self._finish(op, "done", None)
            if step.state == "pending":
                step.state, step.started = "running", now_rfc3339()
                op.data[f"t_{step.name}"] = time.time()
                op.data.setdefault("began_at", op.data[f"t_{step.name}"])  # epoch s, for reports
                self.store.put_operation(op)
            fn = getattr(self, f"step_{step.name}")
            try:
                detail = fn(op)
            except Reroute as r:
                log.info("%s %s: %s", op.kind, op.operation_id, r)
                continue
            except Wait as w:
                step.detail = str(w)
                self.store.put_operation(op)
                return f"{op.kind}: {step.name} waiting: {w}"
            except StoreFenced:
                raise  # deposed: nothing is recorded, the new leader runs this step again
            except Exception as exc:  # typed below: every fault has a decided end
                said = self._on_error(op, step, exc)
                if said is None:
                    continue  # undo begun: its steps run now
                return said
            step.state, step.finished = "done", now_rfc3339()
            step.duration_s = round(time.time() - op.data[f"t_{step.name}"], 4)
            step.detail = detail
            op.data.get("failing", {}).pop(step.name, None)
            op.data.get("attempts", {}).pop(step.name, None)
            self.store.put_operation(op)
            self._not_before.pop(op.operation_id, None)
            _fault_point(op.kind, step.name)
            log.info("%s %s: %s done in %.3fs%s", op.kind, op.operation_id, step.name, step.duration_s,
                     f" ({detail})" if detail else "")

    def _on_error(self, op: OperationRecord, step: StepRecord, exc: Exception) -> str | None:
        """Decide what a step's error means (``steps.decide_on_error``) and do it. Returns a
        sentence when this turn ends, None when an undo was begun and its steps should run."""
        err: Exception = classify(exc) if isinstance(exc, AgentError) else exc
        if not isinstance(err, (Transient, StepRefused, Unsafe, Fail)):
            if isinstance(err, (EndpointError, OSError, psycopg.Error)):
                err = Transient(f"{type(exc).__name__}: {exc}")
            else:
                log.exception("%s %s: %s raised unexpectedly", op.kind, op.operation_id, step.name)
                err = Transient(f"unexpected {type(exc).__name__}: {exc}")
        now = time.time()
        failing = op.data.setdefault("failing", {})
        since = failing.setdefault(step.name, now)
        phase = phase_of(op.kind, step.name)
        dec = decide_on_error(phase, err, now - since, self.retry_bound_s, self.window_left(op, now))
        if dec.action in ("retry", "wait"):
            attempts = op.data.setdefault("attempts", {})
            attempts[step.name] = n = attempts.get(step.name, 0) + 1
            step.detail = f"{err} ({dec.why}; attempt {n})"
            self.store.put_operation(op)
            self._not_before[op.operation_id] = time.monotonic() + backoff(n)
            return f"{op.kind}: {step.name} will be retried: {err}"
        step.state, step.detail, step.finished = "failed", f"{err} ({dec.why})", now_rfc3339()
        if dec.action == "undo":
            self._begin_undo(op, str(err))
            return None
        self._fail(op)
        return self._finish(op, "failed", f"{op.kind} failed at {step.name}: {err}; nothing was changed"
                            if phase is Phase.BEFORE else f"{op.kind} failed at {step.name}: {err}")

    def _finish(self, op: OperationRecord, state: OperationState, message: str | None) -> str:
        op.state = state
        op.finish_time = now_rfc3339()
        op.message = message or op.message
        self.store.put_operation(op)
        self._not_before.pop(op.operation_id, None)
        log.info("%s %s finished: %s %s", op.kind, op.operation_id, state, message or "")
        return message or f"{op.kind} {state}"

    # --- the window in which pooled writes are held ----------------------------------------
    def _guard_window(self, op: OperationRecord, leader_lost: bool = False) -> None:
        """Past the pause deadline the pooler is resumed at once, whatever the step waits for;
        a move that can still be undone is undone, unless the window ran out because the
        control plane that held it was lost (``leader_lost``: the operation was last stepped in
        another term): then the move goes on. Before the old writer was asked to step down it
        pauses again (a fresh window); after, it completes without holding pooled writes
        (their clients get errors until the target takes writes, as in a failover)."""
        left = self.window_left(op)
        if left is None or left > 0:
            return
        try:
            self._resume_pooler(op)
        except Exception as exc:  # noqa: BLE001 - retried on the next turn; said on the step
            log.warning("%s %s: resuming the pooler past the deadline failed: %s", op.kind, op.operation_id, exc)
            return
        step = next((s for s in op.steps if s.state in ("pending", "running")), None)
        if (leader_lost and step is not None and step.name != "pause" and not op.data.get("undo")
                and phase_of(op.kind, step.name) in (Phase.HELD, Phase.MOVING)):
            op.data["leader_lost"] = op.data.get("leader_lost", 0) + 1
            why = (f"the control plane holding the pause was lost for longer than the pause window "
                   f"({self.pause_deadline_s:g} s)")
            if step.name == "demote" and not op.data.get("demote_sent"):
                pause = op.step("pause")
                pause.state, pause.detail = "pending", f"{why}: paused again"
                step.state = "pending"
            else:
                step.detail = f"{why}: the move goes on without holding pooled writes"
                op.data["window_lost"] = step.detail
            log.warning("%s %s: %s; the move goes on", op.kind, op.operation_id, why)
            self.store.put_operation(op)
            return
        if step is not None and phase_of(op.kind, step.name) in (Phase.HELD, Phase.MOVING):
            step.state, step.finished = "failed", now_rfc3339()
            step.detail = (f"pooled writes were held {self.pause_deadline_s:g} s (the pause deadline) while "
                           f"{step.name} waited" + (f": {step.detail}" if step.detail else ""))
            self._begin_undo(op, step.detail)
        else:
            self.store.put_operation(op)

    def _resume_pooler(self, op: OperationRecord) -> None:
        """RESUME the pooled endpoint (idempotent) and add the window to the true write pause."""
        if op.data.get("pause_started") is None or op.data.get("resumed") is not None:
            return
        now = self._resumed_by_watchdog.pop(op.operation_id, None)
        if now is None:
            self._endpoint(op, "resume")
            now = time.time()
        op.data["resumed"] = now
        op.data["held_s"] = round(op.data.get("held_s", 0.0) + now - op.data["pause_started"], 4)
        op.write_pause_s = round(op.data["held_s"], 3)
        self.store.put_operation(op)

    # --- undo ------------------------------------------------------------------------------
    def _begin_undo(self, op: OperationRecord, reason: str) -> None:
        """Skip what is left of the move and append the steps that put the old writer back."""
        op.data["undo"] = reason
        for s in op.steps:
            if s.state in ("pending", "running"):
                s.state = "skipped"
        op.steps += [StepRecord(name=n) for n in UNDO_STEPS]
        self.store.put_operation(op)
        log.warning("%s %s: undoing: %s", op.kind, op.operation_id, reason)

    def _go_forward(self, op: OperationRecord, why: str, promoted: bool) -> None:
        """The target was (or may be) promoted after all: complete the move instead."""
        op.data.pop("undo", None)
        op.steps = [s for s in op.steps if s.name not in UNDO_STEPS]
        after = False
        for s in op.steps:
            if s.name == "promote":
                if promoted:
                    s.state, s.finished, s.detail = "done", now_rfc3339(), why
                else:
                    s.state, s.detail = "pending", why
                after = True
            elif after and s.state in ("skipped", "failed"):
                s.state, s.detail = "pending", None
            elif not after and s.state in ("skipped", "failed"):
                s.state = "done"  # steps before the promote did their part (confirm_lsn, demote)
        op.data["forward"] = why
        self.store.put_operation(op)

    def step_undo_settle(self, op: OperationRecord) -> str:
        """Before the old writer takes writes again, make sure the target is not and will not
        be the writer: its promote request is cancelled (a late delivery is then refused), or
        its answer says it ran, and then the move is completed instead."""
        src, dst = self._svc(op, op.source), self._svc(op, op.target)
        said = []
        if op.data.get("promote_sent"):
            try:
                st = self._agent(dst).cancel_request(dst.cluster, f"{op.operation_id}-promote", timeout=3)
                info = self._agent(dst).lsn(dst.cluster, timeout=3) if st.state in ("cancelled", "refused") else None
            except AgentError as exc:
                if exc.status == 409 and "no leader" in str(exc):
                    info = None
                    st = None
                else:
                    raise Wait(f"cannot tell whether {dst.name} was promoted: {exc}; the move is completed or "
                               "undone once its region agent answers") from None
            if st is not None and st.state in ("queued", "running"):
                raise Wait(f"the promote of {dst.name} is still running; waiting for its end")
            if (st is not None and st.state == "done") or (info is not None and not info.in_recovery):
                self._go_forward(op, f"{dst.name} was promoted (its answer had been lost)", promoted=True)
                raise Reroute(f"{dst.name} is the writer: completing the move")
            if st is not None and st.state == "failed":
                # It may have changed something (e.g. its standby_cluster removed, promotion
                # under way): undoing could make two writers, so the promote is asked again.
                self._go_forward(op, f"the promote of {dst.name} failed half-way: {st.message}", promoted=False)
                raise Reroute(f"{dst.name} may become the writer: completing the move")
            said.append(f"{dst.name} was not promoted")
        if op.data.get("demote_sent"):
            try:
                st = self._agent(src).cancel_request(src.cluster, f"{op.operation_id}-demote", timeout=3)
            except AgentError as exc:
                raise Wait(f"cannot reach {src.name}'s region agent to undo: {exc}") from None
            if st.state in ("queued", "running"):
                raise Wait(f"the demote of {src.name} is still running (bounded by the pause deadline)")
            said.append(f"demote of {src.name}: {st.state}")
        return "; ".join(said) or "nothing had moved"

    def step_undo_promote_source(self, op: OperationRecord) -> str:
        src = self._svc(op, op.source)
        if not op.data.get("demote_sent"):
            return f"{src.name} was never demoted"
        res = self._agent(src).promote(src.cluster, PromoteRequest(
            timeout=20.0, request_id=f"{op.operation_id}-undo", stop_stuck_writer=True))
        return f"{src.name} ({res.node}) takes writes again"

    def step_undo_resume(self, op: OperationRecord) -> str:
        src = self._svc(op, op.source)
        if src.status is not None and op.data.get("pause_started") is not None:
            self._endpoint(op, "repoint", src.status.primary)
        self._resume_pooler(op)
        self._restore_states(op)
        held = op.data.get("held_s")
        return (f"{src.name} is the writer again" + (f"; pooled writes were held {held:.3f}s" if held else ""))

    # --- helpers --------------------------------------------------------------------------
    def _svc(self, op: OperationRecord, name: str) -> ServiceRecord:
        svc = self.store.get_service(op.project, name)
        if svc is None:
            raise Fail(f"service {name} disappeared")
        return svc

    def _agent(self, svc: ServiceRecord) -> AgentClient:
        return self.agents[svc.cloud]

    def _source_for(self, active: ServiceRecord, passive: ServiceRecord) -> StandbySource:
        if active.status is None:
            raise Fail(f"{active.name} has no known endpoint yet")
        ep = active.status.primary
        return StandbySource(host=ep.host, port=ep.port, primary_slot_name=slot_for(passive))

    def _put(self, svc: ServiceRecord) -> None:
        project = self.store.get_project(svc.project)
        assert project is not None
        try:
            source = standby_source_for(self.store, svc)
        except LookupError as exc:
            raise Wait(str(exc)) from None
        self._agent(svc).put_cluster(cluster_spec(svc, project, source))
        self.store.update_service(svc.project, svc.name,
                                  lambda cur: cur.model_copy(update={"applied_generation": svc.generation}))

    def _update(self, project: str, name: str, **changes: Any) -> ServiceRecord:
        bump = changes.pop("_bump", False)  # here, not in ``change``: a store may run it twice

        def change(cur: ServiceRecord) -> ServiceRecord:
            upd = dict(changes)
            if bump:
                upd["generation"] = cur.generation + 1
            upd["update_time"] = now_rfc3339()
            return cur.model_copy(update=upd)

        out = self.store.update_service(project, name, change)
        if out is None:
            raise Fail(f"service {name} disappeared")
        return out

    def _endpoint(self, op: OperationRecord, fn: str, *args: Any) -> Any:
        if self.endpoints is None:
            return None
        pair = self._svc(op, op.pair)
        return getattr(self.endpoints, fn)(self.endpoint_name(pair), *args)

    # --- setup / restore ------------------------------------------------------------------
    def step_rebuild_passive(self, op: OperationRecord) -> str:
        passive_name = op.service
        passive = self._svc(op, passive_name)
        active = self._svc(op, passive.dr_peer or "")
        if op.kind == "setup" and op.data.get("recreate") and not op.data.get("deleted"):
            # An existing service becomes the copy: its cluster is replaced by one cloned from the source.
            self._agent(passive).delete_cluster(passive.cluster)
            op.data["deleted"] = True
            self.store.put_operation(op)
        if op.kind == "failback_restore":
            passive = self._update(op.project, passive_name, powered=True, standby_of=active.name,
                                   state="REBUILDING", ever_ready=False, _bump=True)
        self._source_for(active, passive)  # fails clearly if the active side has no endpoint yet
        self._put(passive)
        return f"{passive_name} rebuilt as a standby of {active.name}"

    def step_wait_passive_in_sync(self, op: OperationRecord) -> str:
        pair = self._svc(op, op.pair)
        peer = self._svc(op, pair.dr_peer or "")
        passive = pair if pair.dr_role == "passive" else peer
        st = passive.status
        if st is None or st.generation < passive.generation or not (st.ready and st.standby):
            waited = time.time() - op.data.get("t_wait_passive_in_sync", time.time())
            if op.kind not in ("setup", "failback_restore") and waited > PASSIVE_CATCH_UP_BOUND_S:
                # The writer moved long ago; the old one is still not streaming. The operation
                # ends (the pair is usable); the service's status says what is wrong.
                for s in (pair, peer):
                    self._update(op.project, s.name, state="RUNNING", ever_ready=True)
                return (f"{passive.name} is not streaming yet after {waited:.0f} s; the move is complete and "
                        "the reconciler keeps watching it" + (f" ({st.message})" if st and st.message else ""))
            raise Wait(f"{passive.name} is catching up" + (f": {st.message}" if st and st.message else ""))
        active = peer if passive is pair else pair
        if op.kind in ("setup", "failback_restore"):
            # Streaming is not enough: REBUILDING until the passive side has caught up, so that the
            # next planned move (which refuses a lagging target) can follow at once.
            lag = pair_lag(active, passive, 0.0).lag_bytes
            if lag is None or lag > IN_SYNC_LAG_BYTES:
                raise Wait(f"{passive.name} streams and is catching up"
                           + (f": {lag} bytes behind" if lag is not None else ""))
        for s in (pair, peer):
            self._update(op.project, s.name, state="RUNNING", ever_ready=True)
        if op.kind == "failback_restore" and isinstance(op.data.get("restore"), dict):
            return self._restore_caught_up(op, passive)
        return f"{passive.name} streams from the active service"

    def _restore_caught_up(self, op: OperationRecord, passive: ServiceRecord) -> str:
        """Complete the restore record: the WAL streamed from the active service since the
        restored data ended is cross-region traffic too."""
        rec = op.data["restore"]
        lsn = passive.status.lsn if passive.status else None
        caught_up = lsn_int(lsn.receive_lsn or lsn.replay_lsn) if lsn else None
        start = lsn_int(rec.get("stream_start_lsn"))
        if rec.get("source") == "restore" and caught_up is not None and start is not None:
            rec["streamed_bytes"] = max(0, caught_up - start)
            rec["cross_region_bytes"] = (rec.get("cross_region_bytes") or 0) + rec["streamed_bytes"]
        rec["caught_up_lsn"] = lsn.receive_lsn if lsn else None
        rec["total_s"] = round(time.time() - op.data.get("t_restore", time.time()), 3)
        return (f"{passive.name} streams from the active service; rebuilt by {rec.get('source')}, "
                f"{rec.get('cross_region_bytes')} bytes across regions in {rec['total_s']} s")

    def step_preserve(self, op: OperationRecord) -> str:
        failed = self._svc(op, op.service)
        failover = next((o for o in reversed(self.store.list_operations(op.project, op.pair))
                         if o.kind == "failover" and o.state == "done"), None)
        fork = (failover.data.get("switch_lsn") if failover else None) or "0/0"
        # The copy runs in the agent's background and is polled: a large data directory never
        # holds a request (nor this pair's thread) open.
        tries = int(op.data.get("preserve_try", 1))
        req_id = f"{op.operation_id}-preserve-{tries}"
        agent = self._agent(failed)
        try:
            st = agent.get_preserve(failed.cluster)
            if st is None or st.request_id != req_id:
                if st is not None and st.state == "running":
                    raise Wait(f"an earlier copy of {failed.name}'s data ({st.request_id}) is still running")
                st = agent.start_preserve(failed.cluster, PreserveRequest(fork_lsn=fork, request_id=req_id))
        except AgentError as exc:
            if exc.status is None:
                raise Fail(f"the region {failed.cloud} of {failed.name} is unreachable; bring it back first "
                           f"(pgcrdr region up {failed.cloud}) and retry") from None
            raise
        if st.state == "running":
            raise Wait(f"keeping {failed.name}'s old data directory aside ({st.node or 'its most advanced node'})")
        if st.state == "failed" or st.result is None:
            if "interrupted" in (st.message or "") and tries < 3:
                op.data["preserve_try"] = tries + 1
                self.store.put_operation(op)
                raise Wait(f"the copy of {failed.name}'s data was interrupted by an agent restart; asking again")
            raise Fail(st.message or "keeping the old data aside failed")
        res = st.result
        op.data["preserved"] = res.model_dump(mode="json")
        if failover is not None and failover.data_loss is not None and res.path:
            failover.data_loss["divergent_commits"] = len(res.commits)
            failover.data_loss["commits"] = [c.model_dump(mode="json") for c in res.commits[:100]]
            self.store.put_operation(failover)
        if not res.path:
            return f"{failed.name} has no old data directory left: nothing to keep"
        return f"old data kept at {res.path}; {len(res.commits)} commits never reached the recovery region"

    def step_restore(self, op: OperationRecord) -> str:
        failed = self._svc(op, op.service)
        active = self._svc(op, failed.dr_peer or "")
        failover = next((o for o in reversed(self.store.list_operations(op.project, op.pair))
                         if o.kind == "failover" and o.state == "done"), None)
        fork = failover.data.get("switch_lsn") if failover else None
        timeline = failover.data.get("timeline") if failover else None
        if timeline is None and active.status and active.status.lsn:
            timeline = active.status.lsn.timeline
        sources = op.data.get("sources") or (list(REBUILD_SOURCES) if fork and timeline else ["basebackup"])
        source = self._source_for(active, failed)
        tries = int(op.data.get("rebuild_try", 1))
        req_id = f"{op.operation_id}-{tries}"
        agent = self._agent(failed)
        try:
            st = agent.get_rebuild(failed.cluster)
        except AgentError as exc:
            if exc.status is None:
                raise Wait(f"the region {failed.cloud} of {failed.name} is unreachable: {exc}") from None
            st = None  # never rebuilt
        if st is None or st.request_id != req_id:
            if st is not None and st.state == "running":
                raise Wait(f"an earlier rebuild of {failed.name} ({st.request_id}) is still running")
            st = agent.rebuild(failed.cluster, RebuildRequest(
                source=source, fork_lsn=fork or "0/0", fork_timeline=int(timeline or 2),
                sources=sources, request_id=req_id))
        if st.state == "running":
            tried = ", ".join(f"{a.source} {'skipped' if a.skipped else 'failed'}" for a in st.attempts)
            pct = (f" {100 * st.progress_current // st.progress_max}%"
                   if st.progress_current is not None and st.progress_max else "")
            raise Wait(f"rebuilding {st.node}: {st.phase}{pct}" + (f" (after: {tried})" if tried else ""))
        if st.state == "failed":
            if "interrupted" in (st.message or "") and tries < 3:
                op.data["rebuild_try"] = tries + 1
                self.store.put_operation(op)
                raise Wait(f"the rebuild of {failed.name} was interrupted by an agent restart; asking again")
            raise Fail(st.message or "the rebuild failed")
        chosen = next(a for a in st.attempts if a.ok)
        op.data["restore"] = {
            "source": st.chosen, "node": st.node, "reason": chosen.reason,
            "cross_region_bytes": chosen.cross_region_bytes, "local_bytes": chosen.local_bytes,
            "backup": chosen.backup_label, "stream_start_lsn": chosen.stream_start_lsn,
            "rebuild_s": chosen.duration_s,
            "estimates": st.estimates, "unusable": st.unusable, "order": st.order,
            "attempts": [a.model_dump(mode="json", exclude_none=True) for a in st.attempts],
        }
        fell_back = [a for a in st.attempts if not a.ok]
        said = "; ".join([f"{a.source}: {a.reason}" for a in fell_back]
                         + [f"{k}: {v}" for k, v in st.unusable.items() if all(a.source != k for a in fell_back)])
        est = ", ".join(f"{k} {v // 2**20} MiB" for k, v in sorted(st.estimates.items(), key=lambda kv: kv[1]))
        return (f"{failed.name} rebuilt by {st.chosen} ({chosen.reason})"
                + (f"; not used: {said}" if said else "")
                + (f"; estimated bytes across regions: {est}" if est else ""))

    # --- planned switch -------------------------------------------------------------------
    def step_precheck(self, op: OperationRecord) -> str:
        src, dst = self._svc(op, op.source), self._svc(op, op.target)
        w = self._agent(src).lsn(src.cluster, timeout=CALL_TIMEOUT_S)
        r = self._agent(dst).lsn(dst.cluster, timeout=CALL_TIMEOUT_S)
        if w.in_recovery:
            raise Fail(f"{src.name} is not the writer")
        if not r.in_recovery:
            raise Fail(f"{dst.name} is already writable")
        lag = (lsn_int(w.current_lsn) or 0) - (lsn_int(r.receive_lsn) or 0)
        if r.receive_lsn is None or lag > MAX_LAG_BYTES:
            raise Fail(f"{dst.name} is {lag} bytes behind {src.name}; retry once replication caught up")
        return f"{dst.name} is {max(lag, 0)} bytes behind"

    def step_checkpoint(self, op: OperationRecord) -> str:
        src = self._svc(op, op.source)
        return f"checkpoint at {self._agent(src).checkpoint(src.cluster, timeout=CHECKPOINT_TIMEOUT_S).current_lsn}"

    def step_pause(self, op: OperationRecord) -> str:
        if self.endpoints is None:
            return "no pooled endpoint"
        if op.data.get("pause_interrupted"):
            # The control plane died while PAUSE waited; its restart freed the pooled clients.
            # Pausing again would hold them a second time for what held the first PAUSE.
            raise Unsafe(f"the control plane restarted while PAUSE waited; {self._blocking_sessions(op)}")
        if op.data.get("pause_started") is None or op.data.get("resumed") is not None:
            # The intent is persisted before PAUSE is sent: a control plane killed while PAUSE
            # waits finds it and ends the window (resume) by the deadline.
            op.data["pause_started"], op.data["resumed"] = time.time(), None
            op.data.setdefault("pause_tries", 0)
            op.data["pause_tries"] += 1
            self.store.put_operation(op)
        left = self.window_left(op) or 0.0
        if left <= 0:
            raise Transient("the pause deadline passed before PAUSE completed")
        try:
            took = self._endpoint(op, "pause", left)
        except PauseTimeout as exc:
            op.data["resumed"] = time.time()  # PgBouncerAdmin.pause resumed the pooler itself
            op.data["held_s"] = round(op.data.get("held_s", 0.0) + op.data["resumed"] - op.data["pause_started"], 4)
            op.write_pause_s = round(op.data["held_s"], 3)
            raise Unsafe(f"{exc}; {self._blocking_sessions(op)}") from None
        note = self._endpoint(op, "note") if hasattr(self.endpoints, "note") else ""
        again = ("paused again (the control plane holding the first pause was lost for longer than the "
                 "window); " if op.data.get("leader_lost") and op.data.get("pause_tries", 0) > 1 else "")
        return f"{again}pooled endpoint paused in {took:.3f}s" + (f"; {note}" if note else "")

    def _blocking_sessions(self, op: OperationRecord) -> str:
        """Who held the PAUSE: the writer's sessions with a transaction open (pg_stat_activity)."""
        src = self._svc(op, op.source)
        try:
            info = self._agent(src).sessions(src.cluster, timeout=CALL_TIMEOUT_S)
        except AgentError as exc:
            return f"the sessions holding it could not be listed ({exc})"
        return describe_sessions(info)

    def step_demote(self, op: OperationRecord) -> str:
        src, dst = self._svc(op, op.source), self._svc(op, op.target)
        left = self.window_left(op)
        budget = max(0.5, left - 0.2) if left is not None else DEMOTE_TIMEOUT_S
        if not op.data.get("demote_sent"):
            op.data["demote_sent"] = True  # from here an undo must ask the source's agent
            self.store.put_operation(op)
        # From here on src can only come back as a standby of dst (its DCS says so), until an
        # undo promotes it again.
        res = self._agent(src).demote(src.cluster, DemoteRequest(
            standby_of=self._source_for(dst, src), timeout=budget, request_id=f"{op.operation_id}-demote"))
        op.data["final_lsn"] = res.final_lsn
        op.data["writer_down_s"] = res.writer_down_s
        return f"{src.name} down at {res.final_lsn} after {res.writer_down_s:.3f}s"

    def step_confirm_lsn(self, op: OperationRecord) -> str:
        # Fence, then prove, then promote: the target must hold every WAL record of the old writer.
        dst = self._svc(op, op.target)
        final = lsn_int(op.data["final_lsn"]) or 0
        left = self.window_left(op)
        deadline = time.monotonic() + (left if left is not None else CONFIRM_TIMEOUT_S)
        seen: str | None = None
        while True:
            try:
                # The agent waits on its side (reading locally every 2 ms) and answers as soon as
                # the target holds the final LSN: one call, not a poll loop across the network.
                wait = max(0.0, min(2.0, deadline - time.monotonic()))
                info = self._agent(dst).lsn(dst.cluster, timeout=max(0.2, wait + 1.0),
                                            at_least=op.data["final_lsn"], wait=wait)
                seen = info.receive_lsn
                if (lsn_int(info.receive_lsn) or 0) >= final:
                    return f"{dst.name} received {info.receive_lsn} >= {op.data['final_lsn']}"
            except AgentError as exc:
                seen = f"no answer: {exc}"
            if time.monotonic() >= deadline:
                raise Unsafe(f"{dst.name} did not confirm {op.data['final_lsn']} in time (last: {seen})")
            time.sleep(0.01)

    def step_promote(self, op: OperationRecord) -> str:
        dst = self._svc(op, op.target)
        if not op.data.get("promote_sent"):
            op.data["promote_sent"] = True  # from here an undo must first settle what the target did
            self.store.put_operation(op)
        left = self.window_left(op)
        budget = PROMOTE_TIMEOUT_S if left is None else max(1.0, min(PROMOTE_TIMEOUT_S, left))
        res = self._agent(dst).promote(dst.cluster, PromoteRequest(
            timeout=budget, request_id=f"{op.operation_id}-promote"))
        op.data["switch_lsn"] = res.switch_lsn
        op.data["timeline"] = res.timeline
        op.data["promoted_s"] = res.promoted_s
        op.data["promoted_at"] = time.time()
        return f"{dst.name} writable after {res.promoted_s:.3f}s (timeline {res.timeline})"

    def step_repoint(self, op: OperationRecord) -> str:
        dst = self._svc(op, op.target)
        if dst.status is None:
            raise Wait(f"{dst.name} has no known endpoint yet")
        self._endpoint(op, "repoint", dst.status.primary)
        if op.kind in ("failover", "repair") and "t_record_lsn" in op.data:
            op.write_pause_s = round(time.time() - op.data["t_record_lsn"], 3)
        return f"Service URI now reaches {dst.name}"

    def step_resume(self, op: OperationRecord) -> str:
        self._resume_pooler(op)
        held = op.data.get("held_s") or 0.0
        op.write_pause_s = round(held, 3)
        if op.data.get("window_lost"):
            # no writer took pooled writes from the pause until now: that is the true write pause
            op.write_pause_s = round(time.time() - op.data.get("t_pause", time.time()), 3)
            return (f"pooled writes were released at the pause deadline after {held:.3f}s held; none "
                    f"could be written for {op.write_pause_s:.3f}s ({op.data['window_lost']})")
        return f"pooled endpoint resumed; writes were held {held:.3f}s"

    def step_records(self, op: OperationRecord) -> str:
        src, dst = self._svc(op, op.source), self._svc(op, op.target)
        if op.kind == "repair" and src.name == dst.name:
            self._update(op.project, dst.name, state="RUNNING", standby_of=None, message=None, _bump=True)
            self._push_quietly(op, dst.name)
            if dst.dr_peer:
                self._update(op.project, dst.dr_peer, state="RUNNING", message=None)
            return f"{dst.name} is the writer again"
        if op.kind == "failover":
            self._update(op.project, src.name, dr_role="failed", state="POWEROFF", powered=False,
                         standby_of=dst.name, _bump=True)
            self._update(op.project, dst.name, dr_role="active", state="RUNNING", standby_of=None, _bump=True)
        else:
            # a repair has no wait_passive_in_sync step: the reconciler reports the old side's state
            self._update(op.project, src.name, dr_role="passive", standby_of=dst.name, _bump=True,
                         state="RUNNING" if op.kind == "repair" else "REBALANCING")
            self._update(op.project, dst.name, dr_role="active", state="RUNNING", standby_of=None, _bump=True)
        self._flip_integration(op.project, active=dst.name, passive=src.name)
        # Send both regions the specs that match what demote/promote/fence already did, so that
        # nothing later (a restart of their agents) undoes the move.
        for name in (dst.name, src.name):
            self._push_quietly(op, name)
        return f"{dst.name} is active, {src.name} is {'failed' if op.kind == 'failover' else 'passive'}"

    def _push_quietly(self, op: OperationRecord, name: str) -> None:
        try:
            self._put(self._svc(op, name))
        except (AgentError, Wait) as exc:  # e.g. the failed region is down: pushed when it returns
            log.info("%s: spec of %s not pushed yet: %s", op.kind, name, exc)

    def _flip_integration(self, project: str, active: str, passive: str) -> None:
        def flip(tx: Tx) -> None:
            for i in tx.integrations(project):
                if {i.source, i.dest} == {active, passive} and i.source != active:
                    tx.put_integration(i.model_copy(update={"source": active, "dest": passive}))

        self.store.transaction(flip)

    # --- failover -------------------------------------------------------------------------
    def step_record_lsn(self, op: OperationRecord) -> str:
        pri, rec = self._svc(op, op.source), self._svc(op, op.target)
        try:
            r = self._agent(rec).lsn(rec.cluster, timeout=CALL_TIMEOUT_S)
        except AgentError as exc:
            # 409 here means no leader answers right now (e.g. restarting): worth asking again too
            raise Transient(f"the recovery service {rec.name} cannot be reached: {exc}") from None
        received = r.receive_lsn or r.replay_lsn
        try:
            w = self._agent(pri).lsn(pri.cluster, timeout=PRIMARY_PROBE_TIMEOUT_S,
                                     connect_timeout=PRIMARY_CONNECT_TIMEOUT_S)
            live_lsn = w.current_lsn or w.receive_lsn
            problem = None
        except AgentError as exc:
            live_lsn, problem = None, str(exc)
            op.data["primary_unreachable"] = exc.status is None
        if live_lsn is None and op.data.get("primary_unreachable") and self.lease_holder is not None:
            self._await_writer_lease(op, pri)
        op.data_loss = data_loss_report(live_lsn, problem, pri, received, time.time())
        if "lease_wait_s" in op.data:
            op.data_loss["writer_lease_wait_s"] = op.data["lease_wait_s"]
        b = op.data_loss
        if b["bytes"] is not None:
            return f"primary at {live_lsn}, recovery received {received}: {b['bytes']} bytes not replicated"
        return (f"primary unreachable: data given up unknown (at least {b['lower_bound_bytes']} bytes; last seen "
                f"{b['primary_last_seen_lsn']}, {b['primary_last_seen_age_s']} s before); recovery received "
                f"{received}")

    def _await_writer_lease(self, op: OperationRecord, pri: ServiceRecord) -> None:
        """An unreachable primary may still be a writer taking writes inside its region: the
        recovery is promoted only once that region's writer lease is gone (its agent stops its
        writers before the lease expires). Waits at most twice the TTL; a lease still held then
        means the region's agent is alive and reaches the global store: nothing is changed."""
        assert self.lease_holder is not None
        started = float(op.data.setdefault("t_lease_wait", time.time()))
        waited = time.time() - started
        try:
            holder = self.lease_holder(pri.cloud)
        except Exception as exc:  # noqa: BLE001 - the global store not answering: no safe decision yet
            holder, why = {}, f"the global store does not answer ({str(exc)[:200]})"
        else:
            why = f"held by {holder.get('holder', '?')}" if holder is not None else ""
        if holder is None:
            op.data["lease_wait_s"] = round(waited, 2)
            return
        if waited > 2 * self.writer_lease_ttl_s:
            raise Fail(f"{pri.cloud}'s writer lease is still {why or 'held'} after {waited:.0f} s: its agent is "
                       f"alive and may still run {pri.name}'s writer; nothing was changed. Restore the control "
                       "plane's connection to that region (a failover then fences it) or stop its writer")
        raise Wait(f"{pri.name}'s region is unreachable: waiting for its writer lease to expire "
                   f"({why}; {waited:.1f} s of at most {self.writer_lease_ttl_s:g} s)")

    def step_fence(self, op: OperationRecord) -> str:
        pri, rec = self._svc(op, op.source), self._svc(op, op.target)
        source = self._source_for(rec, pri)
        # The record says: powered off, may only return as a standby of the recovery service.
        # This holds even if the region is down now: when its agent returns, its clusters are
        # held until the control plane re-sends this spec.
        if not op.data.get("fence_recorded"):
            pri = self._update(op.project, pri.name, powered=False, standby_of=rec.name, _bump=True)
            op.data["fence_recorded"] = True
            self.store.put_operation(op)
        if op.data.get("primary_unreachable"):
            # Its agent did not answer a moment ago: a second wait would only delay the promote.
            # The fence is applied when the region answers again (the reconciler pushes the record).
            return f"{pri.name}'s region is unreachable; the fence is recorded and applied when it returns"
        try:
            res = self._agent(pri).fence(pri.cluster, FenceRequest(standby_of=source),
                                         connect_timeout=PRIMARY_CONNECT_TIMEOUT_S)
            self.store.update_service(op.project, pri.name,
                                      lambda cur: cur.model_copy(update={"applied_generation": pri.generation}))
            return f"{pri.name} stopped (pids {res.killed_pids}); last LSN on disk {res.last_lsn}"
        except AgentError as exc:
            return f"{pri.name}'s region is unreachable ({exc}); it stays fenced when it returns"

    # --- repair of a pair left without a writer --------------------------------------------
    def step_settle(self, op: OperationRecord) -> str:
        """Both sides must answer. A side that takes writes is the writer (the records follow
        it); if neither does, the most advanced becomes the writer again: the recorded active
        one on a tie, and whenever its position is unknown nothing is chosen."""
        act, pas = self._svc(op, op.source), self._svc(op, op.target)
        seen: dict[str, LsnInfo | None] = {}
        for svc in (act, pas):
            try:
                seen[svc.name] = self._agent(svc).lsn(svc.cluster, timeout=CALL_TIMEOUT_S)
            except AgentError as exc:
                if exc.status == 409:  # no leader answering: not writable, position unknown
                    seen[svc.name] = None
                    continue
                raise Wait(f"{svc.name} cannot be asked ({exc}); a writer is chosen only once both sides "
                           "are confirmed") from None
        writable = [n for n, i in seen.items() if i is not None and not i.in_recovery]
        if len(writable) > 1:
            raise Wait(f"both {act.name} and {pas.name} take writes: not choosing; fence one of them")

        def pos(i: LsnInfo | None) -> int | None:
            return None if i is None else lsn_int(i.receive_lsn or i.replay_lsn or i.current_lsn)

        act_seen, pas_seen = seen[act.name], seen[pas.name]
        a, b = pos(act_seen), pos(pas_seen)
        if writable:
            chosen = act if writable[0] == act.name else pas
            why = f"{chosen.name} takes writes"
        elif a is None:
            raise Wait(f"{act.name} has no leader answering: its position is unknown, so no side is chosen yet")
        else:
            chosen = pas if b is not None and b > a else act
            why = f"{chosen.name} is the most advanced ({act_seen and act_seen.receive_lsn} vs " \
                  f"{pas_seen and pas_seen.receive_lsn})"
        op.source = act.name
        op.target = chosen.name
        return f"{why}; it is the writer"

    # --- undo / fail ----------------------------------------------------------------------
    def _fail(self, op: OperationRecord) -> None:
        try:
            self._resume_pooler(op)
        except Exception as exc:  # noqa: BLE001 - the reconciler resumes orphaned pauses
            log.warning("failing %s: resume: %s", op.operation_id, exc)
        self._restore_states(op)

    def _restore_states(self, op: OperationRecord) -> None:
        for name in {op.source, op.target, op.service}:
            svc = self.store.get_service(op.project, name)
            if svc is None:
                continue
            if svc.dr_role == "failed" or (op.kind == "failback_restore" and name == op.service):
                self._update(op.project, name, dr_role="failed", state="POWEROFF", powered=False)
            else:
                self._update(op.project, name, state="RUNNING")


def phase_of(kind: str, step: str) -> Phase:
    """The phase of ``step`` in an operation of ``kind``: a planned switch's promote can still
    be undone (after settling what the target did); a failover's or a repair's cannot."""
    if kind in ("failover", "repair") and step in ("promote", "repoint", "resume", "records"):
        return Phase.COMMITTED
    if step == "promote":
        return Phase.MOVING
    return STEP_PHASE[step]


def data_loss_report(live_lsn: str | None, problem: str | None, primary: ServiceRecord, received: str | None,
                     now: float) -> dict[str, Any]:
    """The data a failover gives up. Exact when the old writer answered; otherwise unknown,
    with the last position seen, how old it is, and the lower bound it gives (commits made
    after that observation are not counted: the number is never presented as the loss)."""
    rec = lsn_int(received)
    if live_lsn is not None:
        gap = max(0, (lsn_int(live_lsn) or 0) - (rec or 0)) if rec is not None else None
        return {"known": gap is not None, "bytes": gap, "primary_last_lsn": live_lsn, "recovery_received_lsn": received,
                "primary_reachable": True, "note": "exact: the primary answered"}
    last = primary.status.lsn.current_lsn if primary.status and primary.status.lsn else None
    age = round(now - primary.status_time, 1) if primary.status_time else None
    lower = max(0, (lsn_int(last) or 0) - rec) if last is not None and rec is not None else 0
    return {
        "known": False, "bytes": None, "lower_bound_bytes": lower,
        "primary_last_seen_lsn": last, "primary_last_seen_age_s": age,
        "primary_last_lsn": None, "recovery_received_lsn": received, "primary_reachable": False,
        "note": (f"unknown: the primary did not answer ({problem}); at least {lower} bytes, from its last position "
                 f"seen {age if age is not None else '?'} s earlier; its commits after the fork are listed when "
                 "its region returns (failback restore keeps them)"),
    }
