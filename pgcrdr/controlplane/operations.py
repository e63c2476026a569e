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
import time
from collections.abc import Callable
from typing import Any, Protocol

from pgcrdr.agent.client import AgentClient, AgentError
from pgcrdr.agent.models import (
    DemoteRequest,
    Endpoint,
    FenceRequest,
    PreserveRequest,
    PromoteRequest,
    RebuildRequest,
    StandbySource,
)
from pgcrdr.controlplane.crdr import slot_for, standby_source_for
from pgcrdr.controlplane.decide import cluster_spec
from pgcrdr.controlplane.lag import lsn_int, pair_lag
from pgcrdr.controlplane.records import OperationRecord, ServiceRecord
from pgcrdr.controlplane.services import now_rfc3339
from pgcrdr.controlplane.store import Store

log = logging.getLogger("pgcrdr.operations")

MAX_LAG_BYTES = 64 * 1024 * 1024  # refuse a planned switch when the target is further behind
CONFIRM_TIMEOUT_S = 10.0
IN_SYNC_LAG_BYTES = 16 * 1024 * 1024  # a rebuilt passive side is "in sync" this close to the writer



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


class Wait(Exception):
    """The step cannot finish yet; retry on a later tick (with a reason)."""


class Undo(Exception):
    """The step proved the move unsafe; undo what was done and leave the writer where it was."""


class Fail(Exception):
    """The operation cannot be carried out; say why."""


class OperationRunner:
    def __init__(self, store: Store, agents: dict[str, AgentClient], endpoints: Endpoints | None,
                 endpoint_name: Callable[[ServiceRecord], str]):
        self.store = store
        self.agents = agents
        self.endpoints = endpoints
        self.endpoint_name = endpoint_name

    # --- driving --------------------------------------------------------------------------
    def advance_all(self) -> None:
        for op in self.store.running_operations():
            try:
                self.advance(op)
            except Exception:  # one broken operation must not stop the others; it is logged
                log.exception("operation %s (%s) crashed a step", op.operation_id, op.kind)

    def advance(self, op: OperationRecord) -> str:
        """Run steps until one has to wait or the operation ends; returns a sentence."""
        while True:
            step = next((s for s in op.steps if s.state in ("pending", "running")), None)
            if step is None:
                return self._finish(op, "done", None)
            if step.state == "pending":
                step.state, step.started = "running", now_rfc3339()
                op.data[f"t_{step.name}"] = time.time()
                self.store.put_operation(op)
            fn = getattr(self, f"step_{step.name}")
            try:
                detail = fn(op)
            except Wait as w:
                step.detail = str(w)
                self.store.put_operation(op)
                return f"{op.kind}: {step.name} waiting: {w}"
            except Undo as u:
                step.state, step.detail = "failed", str(u)
                self._undo(op)
                return self._finish(op, "undone", f"{op.kind} undone, {op.source} stays the writer: {u}")
            except (Fail, AgentError) as f:
                step.state, step.detail = "failed", str(f)
                self._fail(op)
                return self._finish(op, "failed", f"{op.kind} failed at {step.name}: {f}")
            step.state, step.finished = "done", now_rfc3339()
            step.duration_s = round(time.time() - op.data[f"t_{step.name}"], 4)
            step.detail = detail
            self.store.put_operation(op)
            _fault_point(op.kind, step.name)
            log.info("%s %s: %s done in %.3fs%s", op.kind, op.operation_id, step.name, step.duration_s,
                     f" ({detail})" if detail else "")

    def _finish(self, op: OperationRecord, state: str, message: str | None) -> str:
        op.state = state  # type: ignore[assignment]
        op.finish_time = now_rfc3339()
        op.message = message or op.message
        self.store.put_operation(op)
        log.info("%s %s finished: %s %s", op.kind, op.operation_id, state, message or "")
        return message or f"{op.kind} {state}"

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
        def change(cur: ServiceRecord) -> ServiceRecord:
            bump = "generation" if changes.pop("_bump", False) else None
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
        try:
            res = self._agent(failed).preserve(failed.cluster, PreserveRequest(fork_lsn=fork))
        except AgentError as exc:
            if exc.status is None:
                raise Fail(f"the region {failed.cloud} of {failed.name} is unreachable; bring it back first "
                           f"(pgcrdr region up {failed.cloud}) and retry") from None
            raise
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
        sources = op.data.get("sources") or (["rewind", "restore", "basebackup"] if fork and timeline
                                             else ["basebackup"])
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
                sources=sources, request_id=req_id))  # type: ignore[arg-type]
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
        w = self._agent(src).lsn(src.cluster)
        r = self._agent(dst).lsn(dst.cluster)
        if w.in_recovery:
            raise Fail(f"{src.name} is not the writer")
        if not r.in_recovery:
            raise Fail(f"{dst.name} is already writable")
        lag = (lsn_int(w.current_lsn) or 0) - (lsn_int(r.receive_lsn) or 0)
        if r.receive_lsn is None or lag > MAX_LAG_BYTES:
            raise Fail(f"{dst.name} is {lag} bytes behind {src.name}; retry once replication caught up")
        return f"{dst.name} is {max(lag, 0)} bytes behind"

    def step_pause(self, op: OperationRecord) -> str:
        op.data["pause_started"] = time.time()
        took = self._endpoint(op, "pause", 10.0)
        return f"pooled endpoint paused in {took:.3f}s" if took is not None else "no pooled endpoint"

    def step_checkpoint(self, op: OperationRecord) -> str:
        src = self._svc(op, op.source)
        return f"checkpoint at {self._agent(src).checkpoint(src.cluster).current_lsn}"

    def step_demote(self, op: OperationRecord) -> str:
        src, dst = self._svc(op, op.source), self._svc(op, op.target)
        # From here on src can only come back as a standby of dst (its DCS says so).
        try:
            res = self._agent(src).demote(src.cluster, DemoteRequest(standby_of=self._source_for(dst, src)))
        except AgentError as exc:
            raise Undo(f"demoting {src.name} failed: {exc}") from None
        op.data["final_lsn"] = res.final_lsn
        op.data["writer_down_s"] = res.writer_down_s
        return f"{src.name} down at {res.final_lsn} after {res.writer_down_s:.3f}s"

    def step_confirm_lsn(self, op: OperationRecord) -> str:
        # Fence, then prove, then promote: the target must hold every WAL record of the old writer.
        dst = self._svc(op, op.target)
        final = lsn_int(op.data["final_lsn"]) or 0
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        seen = None
        while time.monotonic() < deadline:
            info = self._agent(dst).lsn(dst.cluster)
            seen = info.receive_lsn
            if (lsn_int(info.receive_lsn) or 0) >= final:
                return f"{dst.name} received {info.receive_lsn} >= {op.data['final_lsn']}"
            time.sleep(0.01)
        raise Undo(f"{dst.name} never received {op.data['final_lsn']} (last seen {seen})")

    def step_promote(self, op: OperationRecord) -> str:
        dst = self._svc(op, op.target)
        res = self._agent(dst).promote(dst.cluster, PromoteRequest())
        op.data["switch_lsn"] = res.switch_lsn
        op.data["timeline"] = res.timeline
        op.data["promoted_s"] = res.promoted_s
        return f"{dst.name} writable after {res.promoted_s:.3f}s (timeline {res.timeline})"

    def step_repoint(self, op: OperationRecord) -> str:
        dst = self._svc(op, op.target)
        if dst.status is None:
            raise Fail(f"{dst.name} has no known endpoint")
        self._endpoint(op, "repoint", dst.status.primary)
        if op.kind == "failover":
            op.write_pause_s = round(time.time() - op.data["t_record_lsn"], 3)
        return f"Service URI now reaches {dst.name}"

    def step_resume(self, op: OperationRecord) -> str:
        self._endpoint(op, "resume")
        op.write_pause_s = round(time.time() - op.data.get("pause_started", time.time()), 3)
        return f"pooled endpoint resumed; writes were held {op.write_pause_s:.3f}s"

    def step_records(self, op: OperationRecord) -> str:
        src, dst = self._svc(op, op.source), self._svc(op, op.target)
        if op.kind == "failover":
            self._update(op.project, src.name, dr_role="failed", state="POWEROFF", powered=False,
                         standby_of=dst.name, _bump=True)
            self._update(op.project, dst.name, dr_role="active", state="RUNNING", standby_of=None, _bump=True)
        else:
            self._update(op.project, src.name, dr_role="passive", state="REBALANCING", standby_of=dst.name,
                         _bump=True)
            self._update(op.project, dst.name, dr_role="active", state="RUNNING", standby_of=None, _bump=True)
        self._flip_integration(op.project, active=dst.name, passive=src.name)
        # Send both regions the specs that match what demote/promote/fence already did, so that
        # nothing later (a restart of their agents) undoes the move.
        for name in (dst.name, src.name):
            try:
                self._put(self._svc(op, name))
            except (AgentError, Wait) as exc:  # e.g. the failed region is down: pushed when it returns
                log.info("%s: spec of %s not pushed yet: %s", op.kind, name, exc)
        return f"{dst.name} is active, {src.name} is {'failed' if op.kind == 'failover' else 'passive'}"

    def _flip_integration(self, project: str, active: str, passive: str) -> None:
        with self.store.transaction() as tx:
            for i in tx.integrations(project):
                if {i.source, i.dest} == {active, passive} and i.source != active:
                    tx.put_integration(i.model_copy(update={"source": active, "dest": passive}))

    # --- failover -------------------------------------------------------------------------
    def step_record_lsn(self, op: OperationRecord) -> str:
        pri, rec = self._svc(op, op.source), self._svc(op, op.target)
        live = True
        try:
            w = self._agent(pri).lsn(pri.cluster)
            pri_lsn = w.current_lsn or w.receive_lsn
        except AgentError:
            live = False
            pri_lsn = pri.status.lsn.current_lsn if pri.status and pri.status.lsn else None
        try:
            r = self._agent(rec).lsn(rec.cluster)
        except AgentError as exc:
            raise Fail(f"the recovery service {rec.name} cannot be reached: {exc}") from None
        received = r.receive_lsn or r.replay_lsn
        gap = max(0, (lsn_int(pri_lsn) or 0) - (lsn_int(received) or 0)) if pri_lsn and received else None
        op.data_loss = {"primary_last_lsn": pri_lsn, "recovery_received_lsn": received, "bytes": gap,
                        "primary_reachable": live,
                        "note": "exact" if live else "estimated from the last LSN observed before the outage"}
        return f"primary at {pri_lsn}, recovery received {received}: {gap} bytes not replicated"

    def step_fence(self, op: OperationRecord) -> str:
        pri, rec = self._svc(op, op.source), self._svc(op, op.target)
        source = self._source_for(rec, pri)
        # The record says: powered off, may only return as a standby of the recovery service.
        # This holds even if the region is down now: when its agent returns, its clusters are
        # held until the control plane re-sends this spec.
        pri = self._update(op.project, pri.name, powered=False, standby_of=rec.name, _bump=True)
        try:
            res = self._agent(pri).fence(pri.cluster, FenceRequest(standby_of=source))
            self.store.update_service(op.project, pri.name,
                                      lambda cur: cur.model_copy(update={"applied_generation": pri.generation}))
            return f"{pri.name} stopped (pids {res.killed_pids}); last LSN on disk {res.last_lsn}"
        except AgentError as exc:
            return f"{pri.name}'s region is unreachable ({exc}); it stays fenced when it returns"

    # --- undo / fail ----------------------------------------------------------------------
    def _undo(self, op: OperationRecord) -> None:
        """The target never proved it had everything: the old writer takes its role back."""
        src = self._svc(op, op.source)
        try:
            self._agent(src).promote(src.cluster, PromoteRequest())
        except AgentError as exc:
            log.error("undo of %s: promoting %s back failed: %s", op.operation_id, src.name, exc)
        try:
            self._endpoint(op, "resume")
        except Exception as exc:  # the endpoint may not be paused at all
            log.warning("undo of %s: resume: %s", op.operation_id, exc)
        op.write_pause_s = round(time.time() - op.data.get("pause_started", time.time()), 3)
        self._restore_states(op)

    def _fail(self, op: OperationRecord) -> None:
        if "pause_started" in op.data:
            try:
                self._endpoint(op, "resume")
            except Exception as exc:
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
