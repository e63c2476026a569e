"""Fake region agents and a fake pooled endpoint for unit tests of the operation runner.

They model only what the runner relies on: which cluster is the writer, WAL positions, request
ids (cancel, idempotent retries) and the pooler's paused state. Every change of writer is
checked: ``World.violations`` records any moment with two writers. Faults are injected per step
of the running operation: a call made while that step runs fails the chosen way for a while.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pgcrdr.agentapi.client import AgentError
from pgcrdr.agentapi.models import (
    ClusterSpec,
    ClusterStatus,
    DemoteRequest,
    DemoteResult,
    Endpoint,
    FenceRequest,
    FenceResult,
    LsnInfo,
    PromoteRequest,
    PromoteResult,
    RequestState,
    SessionInfo,
    SessionsInfo,
)
from pgcrdr.endpoint.models import PauseTimeout

FAULT_KINDS = ("timeout", "refused", "409", "5xx", "lost")


@dataclass
class FakeCluster:
    name: str
    writer: bool
    lsn: int = 0x3000000
    received: int = 0x3000000
    requests: dict[str, str] = field(default_factory=dict)
    fenced: bool = False

    def info(self) -> LsnInfo:
        h = lambda v: f"{v >> 32:X}/{v & 0xFFFFFFFF:X}"  # noqa: E731
        if self.writer:
            return LsnInfo(node=self.name + "-1", in_recovery=False, timeline=1, current_lsn=h(self.lsn))
        return LsnInfo(node=self.name + "-1", in_recovery=True, timeline=1, receive_lsn=h(self.received),
                       replay_lsn=h(self.received))


@dataclass
class Fault:
    step: str  # the operation step during which calls fail
    method: str  # agent method name
    cluster: str | None  # None: any cluster of that agent
    kind: str  # one of FAULT_KINDS
    duration_s: float  # from the first faulty call on
    started: float | None = None

    def active(self, step: str | None, method: str, cluster: str, now: float) -> bool:
        if method != self.method or (self.cluster is not None and cluster != self.cluster):
            return False
        if self.started is None:
            if step != self.step:
                return False
            self.started = now
        return now - self.started < self.duration_s


class World:
    def __init__(self) -> None:
        self.clusters: dict[str, FakeCluster] = {}
        self.violations: list[str] = []
        self.current_step = lambda: None  # set by the test: the running operation's step

    def writers(self) -> list[str]:
        return [c.name for c in self.clusters.values() if c.writer]

    def check(self, what: str) -> None:
        w = self.writers()
        if len(w) > 1:
            self.violations.append(f"two writers after {what}: {w}")


class FakeAgent:
    def __init__(self, world: World, region: str):
        self.world, self.region = world, region
        self.faults: list[Fault] = []
        self.down = False  # the whole region: every call refused

    def _call(self, method: str, cluster: str, effect):  # noqa: ANN001, ANN202
        now = time.monotonic()
        if self.down:
            raise AgentError(f"region agent {self.region} unreachable: connection refused")
        for f in self.faults:
            if f.active(self.world.current_step(), method, cluster, now):
                if f.kind == "timeout":
                    raise AgentError(f"region agent {self.region} unreachable: timed out")
                if f.kind == "refused":
                    raise AgentError(f"region agent {self.region} unreachable: connection refused")
                if f.kind == "409":
                    raise AgentError(f"region agent refused {method}: busy", status=409)
                if f.kind == "5xx":
                    raise AgentError(f"region agent refused {method}: internal error", status=500)
                if f.kind == "lost":
                    effect()
                    raise AgentError(f"region agent {self.region} unreachable: timed out (answer lost)")
        return effect()

    def _c(self, cluster: str) -> FakeCluster:
        return self.world.clusters[cluster]

    def _track(self, c: FakeCluster, request_id: str | None, fn):  # noqa: ANN001, ANN202
        if request_id is not None and c.requests.get(request_id) == "cancelled":
            raise AgentError(f"request {request_id} was cancelled", status=409)
        try:
            out = fn()
        except AgentError as exc:
            if request_id is not None:
                c.requests[request_id] = "refused" if exc.status == 409 else "failed"
            raise
        if request_id is not None:
            c.requests[request_id] = "done"
        return out

    # --- the client's surface ---------------------------------------------------------------
    def lsn(self, cluster: str, timeout: float | None = None, connect_timeout: float | None = None,
            at_least: str | None = None, wait: float = 0.0) -> LsnInfo:
        # answers at once (an agent that does not wait): the caller's loop compares and asks again
        return self._call("lsn", cluster, lambda: self._c(cluster).info())

    def checkpoint(self, cluster: str, timeout: float | None = None) -> LsnInfo:
        return self._call("checkpoint", cluster, lambda: self._c(cluster).info())

    def sessions(self, cluster: str, timeout: float | None = None) -> SessionsInfo:
        return SessionsInfo(node=cluster + "-1", in_recovery=False, sessions=[SessionInfo(
            pid=4242, usename="avnadmin", application_name="holder", state="idle in transaction",
            xact_age_s=12.5, query_age_s=12.5, query="UPDATE t SET v = 1")])

    def demote(self, cluster: str, req: DemoteRequest) -> DemoteResult:
        c = self._c(cluster)

        def effect() -> DemoteResult:
            def do() -> DemoteResult:
                c.writer = False
                for other in self.world.clusters.values():  # a clean shutdown sends every record
                    if other is not c and not other.writer:
                        other.received = max(other.received, c.lsn)
                return DemoteResult(node=cluster + "-1", final_lsn=c.info().current_lsn or _h(c.lsn),
                                    writer_down_s=0.01)
            final = _h(c.lsn)
            res = self._track(c, req.request_id, do)
            return res.model_copy(update={"final_lsn": final})

        return self._call("demote", cluster, effect)

    def promote(self, cluster: str, req: PromoteRequest) -> PromoteResult:
        c = self._c(cluster)

        def effect() -> PromoteResult:
            def do() -> PromoteResult:
                if not c.writer:
                    c.writer = True
                    c.lsn = max(c.lsn, c.received)
                    self.world.check(f"promote of {cluster}")
                return PromoteResult(node=cluster + "-1", promoted_s=0.01, switch_lsn=_h(c.lsn), timeline=2)
            return self._track(c, req.request_id, do)

        return self._call("promote", cluster, effect)

    def cancel_request(self, cluster: str, request_id: str, timeout: float | None = None) -> RequestState:
        c = self._c(cluster)

        def effect() -> RequestState:
            cur = c.requests.get(request_id)
            if cur is None:
                c.requests[request_id] = cur = "cancelled"
            return RequestState(request_id=request_id, state=cur)  # type: ignore[arg-type]

        return self._call("cancel_request", cluster, effect)

    def fence(self, cluster: str, req: FenceRequest, connect_timeout: float | None = None) -> FenceResult:
        c = self._c(cluster)

        def effect() -> FenceResult:
            c.writer, c.fenced = False, True
            return FenceResult(killed_pids=[1], last_lsn=_h(c.lsn))

        return self._call("fence", cluster, effect)

    def put_cluster(self, spec: ClusterSpec, timeout: float | None = None) -> ClusterStatus:
        return self._call("put_cluster", spec.cluster, lambda: _status(spec.cluster, self.region))

    def get_cluster(self, cluster: str, timeout: float | None = None) -> ClusterStatus | None:
        return self._call("get_cluster", cluster, lambda: _status(cluster, self.region))

    def close(self) -> None:
        pass


def _h(v: int) -> str:
    return f"{v >> 32:X}/{v & 0xFFFFFFFF:X}"


def _status(cluster: str, region: str) -> ClusterStatus:
    ep = Endpoint(host="127.0.0.1", port=1)
    return ClusterStatus(cluster=cluster, region=region, ready=True, primary=ep, replica=ep, generation=99)


class FakeEndpoints:
    """The pooled endpoint: paused or not, and where it points. ``open_transaction`` makes
    PAUSE time out (it resumes the pooler itself, as PgBouncerAdmin.pause does)."""

    def __init__(self, world: World):
        self.world = world
        self.paused = False
        self.target: str | None = None
        self.open_transaction = False
        self.pauses = 0
        self.faults: list[Fault] = []

    def _fault(self, method: str) -> None:
        for f in self.faults:
            if f.active(self.world.current_step(), method, "endpoint", time.monotonic()):
                from pgcrdr.endpoint.models import EndpointError

                raise EndpointError(f"PgBouncer admin console unreachable ({method})")

    def pause(self, name: str, timeout: float) -> float:
        self._fault("pause")
        self.pauses += 1
        if self.open_transaction:
            time.sleep(min(timeout, 0.05))
            raise PauseTimeout(f"PAUSE did not complete within {timeout:g}s")
        self.paused = True
        return 0.001

    def repoint(self, name: str, target: Endpoint) -> None:
        self._fault("repoint")
        self.target = target.host

    def resume(self, name: str) -> None:
        self._fault("resume")
        self.paused = False
