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

from pgcrdr.agent.client import AgentClient, AgentError
from pgcrdr.config import Settings
from pgcrdr.controlplane.decide import Observation, cluster_spec, service_view
from pgcrdr.controlplane.records import ServiceRecord
from pgcrdr.controlplane.store import Store

log = logging.getLogger("pgcrdr.reconciler")


class Reconciler:
    def __init__(self, store: Store, settings: Settings, agent_token: str, interval: float = 1.0):
        self.store = store
        self.settings = settings
        self.interval = interval
        self.agents = {r.cloud_name: AgentClient(settings.agent_url(r), agent_token) for r in settings.regions}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        for a in self.agents.values():
            a.close()

    def wake(self) -> None:
        """Run the next tick now (called by the API after it records a change)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop the loop; it is logged
                log.exception("reconciler tick failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    def reconcile_now(self, project: str, name: str) -> None:
        """Push one service's change at once (so a create answers with its endpoints)."""
        svc = self.store.get_service(project, name)
        if svc is not None:
            try:
                self.reconcile(svc)
            except Exception:  # the loop retries; the API call must not fail because of it
                log.exception("immediate reconcile of %s/%s failed", project, name)

    def tick(self) -> None:
        for svc in self.store.list_services():
            self.reconcile(svc)

    def reconcile(self, svc: ServiceRecord) -> str:
        """One step for one service; returns a sentence saying what it did."""
        agent = self.agents.get(svc.cloud)
        if agent is None:
            return f"{svc.name}: no agent for cloud {svc.cloud}"
        if svc.deleting:
            try:
                agent.delete_cluster(svc.cluster)
            except AgentError as exc:
                self._record(svc, Observation(None, agent_error=str(exc)))
                return f"{svc.name}: delete pending, {exc}"
            self.store.delete_service(svc.project, svc.name)
            log.info("service %s/%s terminated", svc.project, svc.name)
            return f"{svc.name}: terminated"
        try:
            if svc.applied_generation < svc.generation:
                project = self.store.get_project(svc.project)
                if project is None:
                    return f"{svc.name}: project {svc.project} missing"
                status = agent.put_cluster(cluster_spec(svc, project))
                applied = svc.generation
                did = f"applied generation {applied}"
            else:
                status = agent.get_cluster(svc.cluster)
                applied = svc.applied_generation
                did = "observed"
                if status is None:
                    applied = 0  # the region lost the cluster: push it again next tick
        except AgentError as exc:
            self._record(svc, Observation(None, agent_error=str(exc)))
            return f"{svc.name}: {exc}"
        view = self._record(svc, Observation(status), applied)
        return f"{svc.name}: {did}; {view}"

    def _record(self, svc: ServiceRecord, obs: Observation, applied: int | None = None) -> str:
        reason = ""

        def change(cur: ServiceRecord) -> ServiceRecord | None:
            nonlocal reason
            if cur.deleting and not svc.deleting:
                return None  # deleted meanwhile: next tick handles it
            view = service_view(cur, obs)
            reason = f"{view.state} ({view.reason})"
            update: dict = {"state": view.state, "ever_ready": view.ever_ready, "message": view.message}
            if obs.status is not None:
                update["status"] = obs.status
            if applied is not None:
                # Only what was pushed counts as applied: a change recorded meanwhile bumps
                # generation again and is pushed next tick.
                update["applied_generation"] = min(applied, cur.generation)
            if all(getattr(cur, k) == v for k, v in update.items()):
                return None
            return cur.model_copy(update=update)

        self.store.update_service(svc.project, svc.name, change)
        return reason
