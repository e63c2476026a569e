"""HTTP client the control plane uses to reach a region agent.

Routes served by the agent (``pgcrdr.agent.app``), all JSON, all requiring
``Authorization: Bearer <agent token>``:

    GET    /health                              -> RegionHealth
    GET    /clusters                            -> {"clusters": [ClusterStatus]}
    PUT    /clusters/{cluster}        ClusterSpec -> ClusterStatus   (records intent, converges in background)
    GET    /clusters/{cluster}                  -> ClusterStatus   (404 if unknown)
    DELETE /clusters/{cluster}                  -> {"message": ...} (stops every process, removes files)
    POST   /clusters/{cluster}/nodes/{node}/kill -> KillResult     (SIGKILL Patroni + postmaster; drills)

CRDR primitives (each idempotent; each persists what it changed in the cluster's spec):

    GET    /clusters/{cluster}/lsn                  -> LsnInfo        (the leader's WAL positions)
    GET    /clusters/{cluster}/sessions             -> SessionsInfo   (the leader's client sessions that are
                                                        active or hold a transaction open, oldest first)
    POST   /clusters/{cluster}/checkpoint            -> LsnInfo        (CHECKPOINT on the writer)
    POST   /clusters/{cluster}/demote   DemoteRequest -> DemoteResult  (writer -> standby cluster; returns
                                                        once the writer is down, with its final LSN)
    POST   /clusters/{cluster}/promote  PromoteRequest -> PromoteResult (standby cluster -> writer)
    POST   /clusters/{cluster}/fence    FenceRequest  -> FenceResult   (stop everything, powered=false,
                                                        may only return as a standby of standby_of)
    POST   /clusters/{cluster}/preserve PreserveRequest -> PreserveState (starts keeping the old data dir
                                                        aside and listing commits after the fork point;
                                                        the same request_id answers the same job)
    GET    /clusters/{cluster}/preserve              -> PreserveState  (the last preserve job; 404 if none)
    POST   /clusters/{cluster}/rebuild  RebuildRequest -> RebuildState (starts a failback rebuild)
    GET    /clusters/{cluster}/rebuild               -> RebuildState   (the last rebuild; 404 if none)
    POST   /region/outage                            -> {"message"}    (SIGKILL every process of the
                                                        region, agent included, keeping the disk)
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from pgcrdr.agentapi.models import (
    ClusterSpec,
    ClusterStatus,
    DemoteRequest,
    DemoteResult,
    FenceRequest,
    FenceResult,
    KillResult,
    LsnInfo,
    PreserveRequest,
    PreserveResult,
    PreserveState,
    PromoteRequest,
    PromoteResult,
    RebuildRequest,
    RebuildState,
    RegionHealth,
    RequestState,
    SessionsInfo,
)
from pgcrdr.agentapi.faults import FaultFile, FaultRule
from pgcrdr.agentapi.models import BackupStatus

PRESERVE_POLL_S = 1.0
# Establishing a connection to an agent: a region across a WAN answers a SYN in well under a
# second (one retransmission comes at 1 s). An agent cut off by a partition drops it instead:
# without this bound every call would hang for its whole timeout (up to minutes for a fence).
CONNECT_TIMEOUT_S = 3.0


class AgentError(Exception):
    """The agent could not be reached or refused the request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AgentClient:
    """``faults_file`` and ``region``: consult that fault file (``pgcrdr.agentapi.faults``) for
    rules of ``region`` before each request; both are needed, else no fault applies."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0, faults_file: Path | None = None,
                 region: str | None = None, verify: str | bool = True, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.region = region
        self._faults = FaultFile(faults_file) if faults_file is not None and region is not None else None
        self._client = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            headers={"Authorization": f"Bearer {token}"}, verify=verify,
        )

    def close(self) -> None:
        self._client.close()

    def _timed_out(self, rule: FaultRule) -> AgentError:
        how = "answer lost" if rule.lose_answer else rule.mode
        return AgentError(f"region agent at {self.base_url} unreachable: timed out (fault injected: {how})")

    def _send(self, method: str, path: str, **kw: object) -> httpx.Response:
        """``timeout``: seconds for the whole call; ``connect_timeout``: for establishing the
        connection (default: the client's), so an unreachable agent is told apart quickly."""
        connect = kw.pop("connect_timeout", None)
        connect = float(connect) if isinstance(connect, int | float) else self.connect_timeout
        if isinstance(kw.get("timeout"), int | float):
            total = float(kw["timeout"])  # type: ignore[arg-type]
            kw["timeout"] = httpx.Timeout(total, connect=min(connect, total))
        elif connect != self.connect_timeout:
            kw["timeout"] = httpx.Timeout(self.timeout, connect=min(connect, self.timeout))
        rule = self._faults.match(self.region, method, path) if self._faults is not None else None
        if rule is not None:
            t0 = time.monotonic()
            given = kw.get("timeout")
            timeout = given.read if isinstance(given, httpx.Timeout) and given.read else self.timeout
            if rule.mode == "fail" and not rule.lose_answer:
                raise AgentError(f"region agent at {self.base_url} unreachable: connection refused "
                                 "(fault injected)")
            if rule.mode == "slow":
                time.sleep(rule.delay_s)
            if rule.lose_answer:
                self._client.request(method, path, **kw).close()  # type: ignore[arg-type]  # executed, answer dropped
            if rule.mode == "freeze":
                # as a frozen agent: no answer before the rule ends or this call times out
                time.sleep(max(0.0, min(rule.until - time.time(), timeout - (time.monotonic() - t0))))
            if rule.mode == "freeze" or rule.lose_answer:
                raise self._timed_out(rule)
        return self._client.request(method, path, **kw)  # type: ignore[arg-type]

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            resp = self._send(method, path, **kw)
        except httpx.HTTPError as exc:
            raise AgentError(f"region agent at {self.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 400:
            try:
                msg = resp.json().get("message") or resp.text
            except ValueError:
                msg = resp.text
            raise AgentError(f"region agent refused {method} {path}: {msg}", status=resp.status_code)
        return resp

    def health(self) -> RegionHealth:
        return RegionHealth.model_validate(self._request("GET", "/health").json())

    def put_cluster(self, spec: ClusterSpec, timeout: float | None = None) -> ClusterStatus:
        kw = {"timeout": timeout} if timeout is not None else {}
        resp = self._request("PUT", f"/clusters/{spec.cluster}", json=spec.model_dump(mode="json"), **kw)
        return ClusterStatus.model_validate(resp.json())

    def get_cluster(self, cluster: str, timeout: float | None = None) -> ClusterStatus | None:
        kw = {"timeout": timeout} if timeout is not None else {}
        try:
            resp = self._request("GET", f"/clusters/{cluster}", **kw)
        except AgentError as exc:
            if exc.status == 404:
                return None
            raise
        return ClusterStatus.model_validate(resp.json())

    def list_clusters(self, timeout: float | None = None) -> list[ClusterStatus]:
        kw = {"timeout": timeout} if timeout is not None else {}
        data = self._request("GET", "/clusters", **kw).json()
        return [ClusterStatus.model_validate(c) for c in data["clusters"]]

    def delete_cluster(self, cluster: str) -> None:
        try:
            self._request("DELETE", f"/clusters/{cluster}", timeout=120.0)
        except AgentError as exc:
            if exc.status != 404:
                raise

    def kill_node(self, cluster: str, node: str, restart_after: float = 30.0) -> KillResult:
        resp = self._request("POST", f"/clusters/{cluster}/nodes/{node}/kill",
                             params={"restart_after": restart_after})
        return KillResult.model_validate(resp.json())

    # --- CRDR primitives ------------------------------------------------------------------
    def lsn(self, cluster: str, timeout: float | None = None, connect_timeout: float | None = None,
            at_least: str | None = None, wait: float = 0.0) -> LsnInfo:
        """The leader's positions. With ``at_least`` and ``wait``, the agent answers as soon as
        the leader holds that position, or after ``wait`` seconds (compare the answer): one call
        instead of a poll loop across the network. ``timeout`` should exceed ``wait``."""
        kw: dict[str, object] = {"timeout": timeout} if timeout is not None else {}
        if connect_timeout is not None:
            kw["connect_timeout"] = connect_timeout
        if at_least is not None and wait > 0:
            kw["params"] = {"at_least": at_least, "wait": f"{wait:.3f}"}
        return LsnInfo.model_validate(self._request("GET", f"/clusters/{cluster}/lsn", **kw).json())

    def sessions(self, cluster: str, timeout: float | None = None) -> SessionsInfo:
        """Client sessions of the cluster's leader that are active or hold a transaction open,
        oldest transaction first (``pgcrdr.agentapi.sessions.describe_sessions`` names them)."""
        kw = {"timeout": timeout} if timeout is not None else {}
        return SessionsInfo.model_validate(self._request("GET", f"/clusters/{cluster}/sessions", **kw).json())

    def checkpoint(self, cluster: str, timeout: float | None = None) -> LsnInfo:
        kw = {"timeout": timeout} if timeout is not None else {}
        return LsnInfo.model_validate(self._request("POST", f"/clusters/{cluster}/checkpoint", **kw).json())

    def demote(self, cluster: str, req: DemoteRequest) -> DemoteResult:
        """Answers within ``req.timeout`` plus a margin for the answer itself."""
        resp = self._request("POST", f"/clusters/{cluster}/demote", json=req.model_dump(mode="json"),
                             timeout=req.timeout + 1)
        return DemoteResult.model_validate(resp.json())

    def promote(self, cluster: str, req: PromoteRequest) -> PromoteResult:
        resp = self._request("POST", f"/clusters/{cluster}/promote", json=req.model_dump(mode="json"),
                             timeout=req.timeout + 1)
        return PromoteResult.model_validate(resp.json())

    def cancel_request(self, cluster: str, request_id: str, timeout: float | None = None) -> RequestState:
        """Cancel a demote/promote request id unless it ran: what became of it."""
        kw = {"timeout": timeout} if timeout is not None else {}
        resp = self._request("POST", f"/clusters/{cluster}/requests/{request_id}/cancel", **kw)
        return RequestState.model_validate(resp.json())

    def fence(self, cluster: str, req: FenceRequest, connect_timeout: float | None = None) -> FenceResult:
        resp = self._request("POST", f"/clusters/{cluster}/fence", json=req.model_dump(mode="json"), timeout=60,
                             **({"connect_timeout": connect_timeout} if connect_timeout is not None else {}))
        return FenceResult.model_validate(resp.json())

    def start_preserve(self, cluster: str, req: PreserveRequest) -> PreserveState:
        resp = self._request("POST", f"/clusters/{cluster}/preserve", json=req.model_dump(mode="json"), timeout=60)
        return PreserveState.model_validate(resp.json())

    def get_preserve(self, cluster: str) -> PreserveState | None:
        try:
            resp = self._request("GET", f"/clusters/{cluster}/preserve")
        except AgentError as exc:
            if exc.status == 404:
                return None
            raise
        return PreserveState.model_validate(resp.json())

    def preserve(self, cluster: str, req: PreserveRequest, timeout: float = 600.0,
                 poll_s: float = PRESERVE_POLL_S) -> PreserveResult:
        """Start a preserve and wait for its result (at most ``timeout`` seconds). A preserve of
        another request still running is waited for first. Raises AgentError: status None when
        the agent is unreachable, 504 when the bound ran out, 500 when the job failed."""
        if req.request_id is None:
            req = req.model_copy(update={"request_id": uuid.uuid4().hex})
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.start_preserve(cluster, req)
                break
            except AgentError as exc:
                other = self.get_preserve(cluster) if exc.status == 409 else None
                if other is None or other.state != "running":
                    raise
            if time.monotonic() >= deadline:
                raise AgentError(f"preserve of {cluster}: request {other.request_id} still running after "
                                 f"{timeout:.0f} s; ours was not started", status=504)
            time.sleep(poll_s)
        while st.state == "running":
            if time.monotonic() >= deadline:
                raise AgentError(f"preserve of {cluster} (request {st.request_id}) still running after "
                                 f"{timeout:.0f} s: {st.message}; poll GET /clusters/{cluster}/preserve", status=504)
            time.sleep(poll_s)
            got = self.get_preserve(cluster)
            if got is None or got.request_id != st.request_id:
                raise AgentError(f"preserve of {cluster} (request {st.request_id}) is no longer known to the agent",
                                 status=500)
            st = got
        if st.state != "done" or st.result is None:
            raise AgentError(f"preserve of {cluster} failed: {st.message}", status=500)
        return st.result

    def rebuild(self, cluster: str, req: RebuildRequest) -> RebuildState:
        resp = self._request("POST", f"/clusters/{cluster}/rebuild", json=req.model_dump(mode="json"), timeout=60)
        return RebuildState.model_validate(resp.json())

    def get_rebuild(self, cluster: str) -> RebuildState:
        return RebuildState.model_validate(self._request("GET", f"/clusters/{cluster}/rebuild").json())

    def backups(self, cluster: str) -> BackupStatus:
        return BackupStatus.model_validate(self._request("GET", f"/clusters/{cluster}/backups", timeout=60).json())

    def request_backup(self, cluster: str, kind: str = "full") -> BackupStatus:
        resp = self._request("POST", f"/clusters/{cluster}/backups", params={"type": kind})
        return BackupStatus.model_validate(resp.json())

    def region_outage(self) -> None:
        try:
            self._request("POST", "/region/outage", timeout=5)
        except AgentError as exc:
            if exc.status is not None:  # a connection cut by the outage itself is expected
                raise
