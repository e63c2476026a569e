"""Carries recorded intent out in the regions, one idempotent tick at a time.

Each tick, for every service: push the desired cluster spec to its region when the service's
generation moved, read the cluster's status back, and derive the Aiven ``state`` with the pure
:func:`pgcrdr.controlplane.decide.service_view`. A service marked for deletion is removed from
its region first and from the store after. Nothing is held in memory that a restart would need:
the store has it all, so a killed control plane resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.agentapi.faults import faults_path
from pgcrdr.agentapi.models import ClusterStatus
from pgcrdr.config import Settings
from pgcrdr.controlplane.crdr import new_operation, request_role, standby_source_for
from pgcrdr.controlplane.decide import (
    Observation,
    automatic_failover_due,
    cluster_spec,
    pair_without_writer,
    service_view,
)
from pgcrdr.controlplane.lag import LagHistory
from pgcrdr.controlplane.operations import OperationRunner
from pgcrdr.controlplane.records import OperationRecord, ServiceRecord
from pgcrdr.controlplane.services import now_rfc3339
from pgcrdr.controlplane.store import Store, StoreFenced, Tx
from pgcrdr.writer_lease import lease_reader

log = logging.getLogger("pgcrdr.reconciler")

OBSERVE_TIMEOUT_S = 5.0  # one region's GET /clusters
OBSERVE_WAIT_S = 2.0  # how long a tick waits for the regions' observations before going on
NO_WRITER_GRACE_S = 3.0  # a pair seen without a writer this long (no operation running) is repaired
AFTER_OPERATION_S = 10.0  # ... and not within this long of an operation having run on it
# While a setup or a failback restore waits for its new passive side to stream, that one cluster
# is asked this often (GET /clusters/NAME, the agent's last status) between ticks; the tick runs at
# once when it is ready, instead of at the next interval (a recovery copy's end was seen up to a
# second late, decisions.md). Bounded by the operation: nothing is polled once it has ended.
AWAIT_PASSIVE_POLL_S = 0.2
AWAIT_PASSIVE_TIMEOUT_S = 1.0


def owned_by_operations(ops: list[OperationRecord]) -> set[tuple[str, str]]:
    """Services whose spec and state a running operation controls right now (the reconciler
    leaves them alone). Setup and restore only own the passive side until it has been rebuilt;
    then the reconciler builds it like any other service."""
    owned: set[tuple[str, str]] = set()
    for op in ops:
        if op.kind in ("setup", "failback_restore"):
            rebuilt = op.step("rebuild_passive").state == "done"
            if not rebuilt:
                owned.add((op.project, op.service))
        else:
            owned.update({(op.project, op.source), (op.project, op.target)})
    return owned


def start_repair(store: Store, primary: ServiceRecord, peer: ServiceRecord, why: str) -> OperationRecord | None:
    """Record a ``repair`` operation for the pair (None when an operation runs already)."""
    active = primary if primary.dr_role == "active" else peer
    other = peer if active is primary else primary

    def repair(tx: Tx) -> OperationRecord | None:
        if tx.running_operation(primary.project, primary.name) is not None:
            return None
        op = new_operation(primary.project, primary.name, "repair", active.name, "active", active.name, other.name)
        op.message = why
        tx.put_operation(op)
        for s in (active, other):
            cur = tx.service(s.project, s.name)
            if cur is not None:
                tx.put_service(cur.model_copy(update={
                    "state": "REBALANCING", "update_time": now_rfc3339(),
                    "message": f"no node of the pair takes writes ({why}); pgcrdr is repairing it"}))
        return op

    return store.transaction(repair)


class Reconciler:
    def __init__(self, store: Store, settings: Settings, agent_token: str, interval: float = 1.0,
                 endpoints: Any = None, leading: Callable[[], bool] = lambda: True,
                 runner_endpoints: Any = None):
        """``leading``: whether this replica leads now (pgcrdr.controlplane.leader); a replica
        that does not lead only points its own Service URI endpoints at the recorded writers.
        ``runner_endpoints``: the endpoints as operations pause, repoint and resume them (with
        replicas, every replica's: pgcrdr.controlplane.pauses); default ``endpoints``."""
        self.store = store
        self.leading = leading
        self.settings = settings
        self.interval = interval
        # Drills and tests may make a region's agent look frozen, slow or failing from here
        # (``pgcrdr drill agent-fault``; pgcrdr.agentapi.faults).
        faults = faults_path(settings.home)
        self.agents = {r.cloud_name: AgentClient(settings.agent_url(r), agent_token, faults_file=faults,
                                                 region=r.cloud_name, verify=settings.agent_verify)
                       for r in settings.regions}
        self.endpoints = endpoints  # pgcrdr.endpoint.manager.EndpointManager, or None
        self.runner = OperationRunner(store, self.agents, endpoints if runner_endpoints is None else runner_endpoints,
                                      self.endpoint_name, pause_deadline_s=settings.pause_deadline_s,
                                      retry_bound_s=settings.retry_bound_s, lease_holder=lease_reader(settings),
                                      writer_lease_ttl_s=settings.writer_lease_ttl_s, leading=leading,
                                      replica=settings.control_host or "local")
        self.lag = LagHistory()  # replication lag over recent minutes, for the console's chart
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # One observer thread per region: a region that does not answer delays only its own services.
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(settings.regions)), thread_name_prefix="observe")
        self._first_tick = True
        self._withheld: dict[tuple[str, str], str] = {}  # pair -> why its automatic failover waits
        self._observing: dict[str, Future[None]] = {}  # cloud -> its observation in flight
        self._no_writer_since: dict[tuple[str, str], float] = {}  # pair -> monotonic time first seen
        self._last_busy: dict[tuple[str, str], float] = {}  # pair -> last time an operation ran on it

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        self.runner.wait_idle(30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for a in self.agents.values():
            a.close()

    def wake(self) -> None:
        """Run the next tick now (called by the API after it records a change). An operation
        just recorded starts stepping at once in its own thread, without waiting for the tick
        (which may be observing the regions)."""
        if self._thread is not None:
            try:
                self.runner.advance_all()
            except Exception:  # noqa: BLE001 - the tick gives it its turn anyway
                log.exception("starting operations on wake failed")
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except StoreFenced as exc:
                log.warning("reconciler tick stopped: %s", exc)
            except Exception:  # a bug in one tick must not stop the loop; it is logged
                log.exception("reconciler tick failed")
            self._wait_next_tick(self._next_wait())
            self._wake.clear()

    def _wait_next_tick(self, wait_s: float) -> None:
        """Until the next tick is due or ``wake`` is called; meanwhile a passive side that a
        setup or a failback restore waits for is asked after every ``AWAIT_PASSIVE_POLL_S``, and
        the tick runs as soon as it is ready."""
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return
            awaited = self._awaited_passives()
            if self._wake.wait(min(left, AWAIT_PASSIVE_POLL_S) if awaited else left):
                return
            if awaited and self._any_ready(awaited):
                return

    def _awaited_passives(self) -> list[ServiceRecord]:
        """Passive sides being built by a running setup or failback restore that were not yet
        seen ready (only by the leader: a replica that does not lead calls no region)."""
        if not self.leading():
            return []
        out = []
        try:
            for op in self.store.running_operations():
                if op.kind not in ("setup", "failback_restore"):
                    continue
                step = next((st for st in op.steps if st.state in ("pending", "running")), None)
                if step is None or step.name != "wait_passive_in_sync":
                    continue
                svc = self.store.get_service(op.project, op.service)
                if svc is not None and not (svc.status is not None and svc.status.ready and svc.status.standby):
                    out.append(svc)
        except Exception:  # noqa: BLE001 - the store is read again at the next tick
            log.exception("reading the operations awaiting a passive side failed")
            return []
        return out

    def _any_ready(self, services: list[ServiceRecord]) -> bool:
        for svc in services:
            agent = self.agents.get(svc.cloud)
            if agent is None:
                continue
            try:
                st = agent.get_cluster(svc.cluster, timeout=AWAIT_PASSIVE_TIMEOUT_S)
            except AgentError:
                continue  # the tick observes it and says what is wrong
            if st is not None and st.ready and st.standby:
                return True
        return False

    def _next_wait(self) -> float:
        """The tick interval, shortened so that the watchdog runs right when a pause window ends."""
        window = self._next_window_s()
        return self.interval if window is None else min(self.interval, window)

    def _next_window_s(self) -> float | None:
        """Seconds until the nearest pause window of a running operation ends (None: no window)."""
        nearest: float | None = None
        try:
            for op in self.store.running_operations():
                left = self.runner.window_left(op)
                if left is not None:
                    left = max(0.02, left + 0.01)
                    nearest = left if nearest is None else min(nearest, left)
        except Exception:  # noqa: BLE001 - the store is read again next tick
            log.exception("reading the pause windows failed")
        return nearest

    def reconcile_now(self, project: str, name: str) -> None:
        """Push one service's change at once (so a create answers with its endpoints)."""
        if not self.leading():
            return  # the leader's next tick does it
        svc = self.store.get_service(project, name)
        if svc is not None:
            try:
                self.reconcile(svc)
            except Exception:  # the loop retries; the API call must not fail because of it
                log.exception("immediate reconcile of %s/%s failed", project, name)

    def tick(self) -> None:
        if not self.leading():
            self.follow()
            return
        if self._first_tick:
            self._first_tick = False
            self.recover_pauses()
        if self.endpoints is not None:
            self.runner.enforce_deadlines()  # first: a window that ended is closed now
        self.runner.advance_all()
        busy = owned_by_operations(self.store.running_operations())
        self.observe_all(busy)
        self.runner.advance_all()  # steps waiting on what this tick observed go on now
        if self.endpoints is not None:
            self.resume_orphaned_pauses()
            self.ensure_endpoints(owned_by_operations(self.store.running_operations()))
        self.check_writers()
        self.check_automatic_failover()
        self.lag.sample(self.store.list_services(), time.time())

    def follow(self) -> None:
        """A replica that does not lead: its own Service URI endpoints follow the writers the
        leader records; nothing else is done (no region is called, nothing is written)."""
        self._first_tick = True  # when it leads again, pauses left by a dead leader are recovered first
        if self.endpoints is not None:
            self.resume_orphaned_pauses()
            self.ensure_endpoints(owned_by_operations(self.store.running_operations()))
        self.lag.sample(self.store.list_services(), time.time())

    def observe_all(self, busy: set[tuple[str, str]]) -> None:
        """Reconcile every service, the regions in parallel: one ``GET /clusters`` per region,
        then a PUT for each service whose spec changed. A region that does not answer delays
        only its own services: the tick waits for the observations at most until the next pause
        window ends (so the watchdog is never late), and a region still being observed from an
        earlier tick is not asked again meanwhile."""
        by_region: dict[str, list[ServiceRecord]] = {}
        for svc in self.store.list_services():
            by_region.setdefault(svc.cloud, []).append(svc)
        for cloud, services in by_region.items():
            running = self._observing.get(cloud)
            if running is None or running.done():
                self._observing[cloud] = self._pool.submit(self._observe_region, cloud, services, busy)
        # The regions that answer are usually observed within a fraction of a second; one that
        # does not must not slow the loop for the others (their observations go stale, and an
        # automatic failover needs the recovery side's to be fresh): it goes on in the background.
        bound = OBSERVE_WAIT_S
        window = self._next_window_s()
        if window is not None:
            bound = min(bound, window)
        done, _ = wait(list(self._observing.values()), timeout=bound)
        for f in done:
            try:
                f.result()
            except Exception:  # a bug in one region's pass must not stop the loop; it is logged
                log.exception("observing a region failed")

    def _observe_region(self, cloud: str, services: list[ServiceRecord], busy: set[tuple[str, str]]) -> None:
        agent = self.agents.get(cloud)
        listed: dict[str, ClusterStatus] | None = None
        if agent is not None:
            try:
                listed = {c.cluster: c for c in agent.list_clusters(timeout=OBSERVE_TIMEOUT_S)}
            except AgentError as exc:
                for svc in services:
                    if not svc.deleting:
                        self._record(svc, Observation(None, agent_error=str(exc)),
                                     observe_only=(svc.project, svc.name) in busy)
                return
        for svc in services:
            try:
                self.reconcile(svc, in_operation=(svc.project, svc.name) in busy, listed=listed)
            except Exception:  # one service's problem must not hide the others'
                log.exception("reconciling %s/%s failed", svc.project, svc.name)

    # --- automatic failover (opt-in, with writer leases) -------------------------------------
    def check_automatic_failover(self, now: float | None = None) -> None:
        """Fail over a pair whose active region has not answered for its grace period, when the
        pair opted in and the last known lag is within its bound. Only with writer leases (the
        API refuses to enable it otherwise): the failover still waits for the cut-off region's
        lease to expire, so its writer has stopped before the recovery is promoted."""
        if self.runner.lease_holder is None:
            return
        now = time.time() if now is None else now
        services = {(s.project, s.name): s for s in self.store.list_services()}
        running = {(o.project, o.pair) for o in self.store.running_operations()}
        for pri in services.values():
            if pri.dr_kind != "primary" or not pri.dr_peer or (pri.project, pri.name) in running:
                continue
            peer = services.get((pri.project, pri.dr_peer))
            if peer is None:
                continue
            active, passive = (pri, peer) if pri.dr_role == "active" else (peer, pri)
            due = automatic_failover_due(pri.automatic_failover, active, passive, now)
            key = (pri.project, pri.name)
            if due is None:
                self._withheld.pop(key, None)
                continue
            go, why = due
            if not go:
                if self._withheld.get(key) != why:
                    log.warning("%s/%s: automatic failover withheld: %s", pri.project, pri.name, why)
                    self._withheld[key] = why
                continue
            try:
                op, _ = request_role(self.store, pri.project, active.name, "failed", automatic=why)
            except Exception:  # noqa: BLE001 - e.g. a user's request came first: next tick looks again
                log.exception("automatic failover of %s/%s not started", pri.project, pri.name)
                continue
            if op is not None:
                log.warning("%s/%s: %s: failover %s started", pri.project, pri.name, why, op.operation_id)
                self.runner.advance_all()

    # --- a recorded writer must take writes -------------------------------------------------
    def check_writers(self, now: float | None = None) -> None:
        """A pair whose active service's region runs no writer (both sides standby clusters),
        with no operation running, is repaired: after ``NO_WRITER_GRACE_S`` a ``repair``
        operation confirms neither side is writable and promotes the most advanced one."""
        now = time.monotonic() if now is None else now
        services = {(s.project, s.name): s for s in self.store.list_services()}
        running = {(o.project, o.pair) for o in self.store.running_operations()}
        seen = set()
        for svc in services.values():
            if svc.dr_kind != "primary" or not svc.dr_peer or svc.deleting:
                continue
            peer = services.get((svc.project, svc.dr_peer))
            if peer is None or peer.deleting:
                continue
            key = (svc.project, svc.name)
            if key in running:
                self._last_busy[key] = now
            why = pair_without_writer(svc, peer, time.time())
            # Right after an operation, what was observed may predate its end: not evidence.
            settled = now - self._last_busy.get(key, float("-inf")) >= AFTER_OPERATION_S
            if why is None or key in running or not settled:
                self._no_writer_since.pop(key, None)
                continue
            seen.add(key)
            first = self._no_writer_since.setdefault(key, now)
            if now - first < NO_WRITER_GRACE_S:
                continue
            op = start_repair(self.store, svc, peer, why)
            if op is not None:
                log.warning("pair %s/%s has no writer (%s): repair %s started", svc.project, svc.name, why,
                            op.operation_id)
            self._no_writer_since.pop(key, None)
        for key in list(self._no_writer_since):
            if key not in seen:
                self._no_writer_since.pop(key, None)

    # --- pauses left behind ---------------------------------------------------------------
    def recover_pauses(self) -> None:
        """At start: an operation killed while its PAUSE was pending holds pooled clients for
        nothing; resume them at once (the operation is then undone: pausing again would hold
        them a second time for whatever held the first PAUSE)."""
        for op in self.store.running_operations():
            if op.data.get("pause_started") is None or op.data.get("resumed") is not None:
                continue
            try:
                pause_done = op.step("pause").state == "done"
            except KeyError:
                continue
            if not pause_done:
                try:
                    op.data["pause_interrupted"] = True
                    self.runner._resume_pooler(op)
                    log.warning("%s %s: resumed the pooler its PAUSE held when the control plane stopped",
                                op.kind, op.operation_id)
                except Exception as exc:  # noqa: BLE001 - resume_orphaned_pauses retries
                    log.warning("resuming the pooler of %s: %s", op.operation_id, exc)

    def resume_orphaned_pauses(self) -> None:
        """No endpoint stays paused unless a running operation's pause window holds it."""
        assert self.endpoints is not None
        holding = set()
        for op in self.store.running_operations():
            if self.runner.window_left(op) is not None:
                pair = self.store.get_service(op.project, op.pair)
                if pair is not None:
                    holding.add(self.endpoint_name(pair))
        for name in self.endpoints.paused_names():
            if name in holding:
                continue
            try:
                self.endpoints.resume(name)
                log.warning("endpoint %s was paused with no operation holding it: resumed", name)
            except Exception as exc:  # noqa: BLE001 - tried again next tick
                log.warning("resuming orphaned pause of %s: %s", name, exc)

    def endpoint_name(self, svc: ServiceRecord) -> str:
        """One Service URI per pair: it is named after the pair's primary (or a lone service)."""
        if svc.dr_kind == "recovery" and svc.dr_peer:
            primary = self.store.get_service(svc.project, svc.dr_peer)
            if primary is not None:
                return primary.cluster
        return svc.cluster

    def ensure_endpoints(self, busy: set[tuple[str, str]]) -> None:
        """Point every Service URI at the writer of its pair (not while an operation moves it)."""
        from pgcrdr.endpoint.models import EndpointSpec

        assert self.endpoints is not None
        services = [s for s in self.store.list_services() if not s.deleting]
        # An endpoint no service owns any more (terminated, or a service that became the passive
        # copy of another and now answers on its primary's URI) is removed: it would hold its ports.
        wanted = {s.cluster for s in services if s.dr_kind != "recovery" and s.endpoint_direct_port}
        for name in self.endpoints.names():
            if name not in wanted:
                log.info("removing endpoint %s: no service owns it", name)
                self.endpoints.remove(name)
        for svc in services:
            if svc.dr_kind == "recovery" or svc.endpoint_direct_port is None:
                continue  # a recovery service shares its primary's endpoint
            if (svc.project, svc.name) in busy:
                continue
            members = [svc] + [s for s in services if s.project == svc.project and s.name == svc.dr_peer]
            active = next((s for s in members if s.dr_role in (None, "active")), None)
            target = active.status.primary if active and active.status and active.powered else None
            project = self.store.get_project(svc.project)
            if project is None or svc.endpoint_pooled_port is None:
                continue
            spec = EndpointSpec(
                name=svc.cluster, direct_port=svc.endpoint_direct_port, pooled_port=svc.endpoint_pooled_port,
                target=target, users=cluster_spec(svc, project).users, tls=cluster_spec(svc, project).tls,
            )
            try:
                self.endpoints.ensure(spec)
            except Exception:  # reported on the next tick again; a bad endpoint must not stop the loop
                log.exception("endpoint of %s/%s", svc.project, svc.name)

    def reconcile(self, svc: ServiceRecord, in_operation: bool = False,
                  listed: dict[str, ClusterStatus] | None = None) -> str:
        """One step for one service; returns a sentence saying what it did.

        While an operation moves a service's role, the operation runner alone pushes its spec
        and sets its state; the reconciler only observes it."""
        agent = self.agents.get(svc.cloud)
        if agent is None:
            return f"{svc.name}: no agent for cloud {svc.cloud}"
        if svc.deleting:
            try:
                agent.delete_cluster(svc.cluster)
            except AgentError as exc:
                self._record(svc, Observation(None, agent_error=str(exc)))
                return f"{svc.name}: delete pending, {exc}"
            if self.endpoints is not None and svc.dr_kind != "recovery":
                self.endpoints.remove(svc.cluster)
            self.store.delete_service(svc.project, svc.name)
            log.info("service %s/%s terminated", svc.project, svc.name)
            return f"{svc.name}: terminated"
        status: ClusterStatus | None
        try:
            push = svc.applied_generation < svc.generation and not in_operation
            if push:
                project = self.store.get_project(svc.project)
                if project is None:
                    return f"{svc.name}: project {svc.project} missing"
                try:
                    source = standby_source_for(self.store, svc)
                except LookupError as exc:
                    return f"{svc.name}: waiting: {exc}"
                status = agent.put_cluster(cluster_spec(svc, project, source))
                applied = svc.generation
                did = f"applied generation {applied}"
            else:
                status = listed.get(svc.cluster) if listed is not None else agent.get_cluster(svc.cluster)
                applied = svc.applied_generation
                did = "observed"
                if status is None or status.held:
                    # The region lost the cluster, or came back and holds it until we confirm
                    # what it must run (a fenced primary must not restart as a writer).
                    applied = 0
        except AgentError as exc:
            self._record(svc, Observation(None, agent_error=str(exc)), observe_only=in_operation)
            return f"{svc.name}: {exc}"
        view = self._record(svc, Observation(status), applied, observe_only=in_operation)
        return f"{svc.name}: {did}; {view}"

    def _record(self, svc: ServiceRecord, obs: Observation, applied: int | None = None,
                observe_only: bool = False) -> str:
        reason = ""

        def change(cur: ServiceRecord) -> ServiceRecord | None:
            nonlocal reason
            if cur.deleting and not svc.deleting:
                return None  # deleted meanwhile: next tick handles it
            view = service_view(cur, obs)
            reason = f"{view.state} ({view.reason})"
            update: dict = {"message": view.message}
            if not observe_only:
                update.update(state=view.state, ever_ready=view.ever_ready)
            if obs.status is not None:
                update["status"] = obs.status
                update["status_time"] = time.time()
            if applied is not None:
                # Only what was pushed counts as applied: a change recorded meanwhile bumps
                # generation again and is pushed next tick.
                update["applied_generation"] = min(applied, cur.generation)
            if all(getattr(cur, k) == v for k, v in update.items()):
                return None
            return cur.model_copy(update=update)

        self.store.update_service(svc.project, svc.name, change)
        return reason
