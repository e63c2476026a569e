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
    POST   /clusters/{cluster}/checkpoint            -> LsnInfo        (CHECKPOINT on the writer)
    POST   /clusters/{cluster}/demote   DemoteRequest -> DemoteResult  (writer -> standby cluster; returns
                                                        once the writer is down, with its final LSN)
    POST   /clusters/{cluster}/promote  PromoteRequest -> PromoteResult (standby cluster -> writer)
    POST   /clusters/{cluster}/fence    FenceRequest  -> FenceResult   (stop everything, powered=false,
                                                        may only return as a standby of standby_of)
    POST   /clusters/{cluster}/preserve PreserveRequest -> PreserveResult (keep the old data dir aside,
                                                        list commits after the fork point)
    POST   /region/outage                            -> {"message"}    (SIGKILL every process of the
                                                        region, agent included, keeping the disk)
"""

from __future__ import annotations

import httpx

from pgcrdr.agent.models import (
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
    PromoteRequest,
    PromoteResult,
    RebuildRequest,
    RebuildState,
    RegionHealth,
    RequestState,
)
from pgcrdr.agent.models import BackupStatus


class AgentError(Exception):
    """The agent could not be reached or refused the request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AgentClient:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            resp = self._client.request(method, path, **kw)  # type: ignore[arg-type]
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
    def lsn(self, cluster: str, timeout: float | None = None) -> LsnInfo:
        kw = {"timeout": timeout} if timeout is not None else {}
        return LsnInfo.model_validate(self._request("GET", f"/clusters/{cluster}/lsn", **kw).json())

    def checkpoint(self, cluster: str, timeout: float | None = None) -> LsnInfo:
        kw = {"timeout": timeout} if timeout is not None else {}
        return LsnInfo.model_validate(self._request("POST", f"/clusters/{cluster}/checkpoint", **kw).json())

    def demote(self, cluster: str, req: DemoteRequest) -> DemoteResult:
        """Answers within ``req.timeout`` plus a margin for the answer itself."""
        resp = self._request("POST", f"/clusters/{cluster}/demote", json=req.model_dump(mode="json"),
                             timeout=req.timeout + 2)
        return DemoteResult.model_validate(resp.json())

    def promote(self, cluster: str, req: PromoteRequest) -> PromoteResult:
        resp = self._request("POST", f"/clusters/{cluster}/promote", json=req.model_dump(mode="json"),
                             timeout=req.timeout + 2)
        return PromoteResult.model_validate(resp.json())

    def cancel_request(self, cluster: str, request_id: str, timeout: float | None = None) -> RequestState:
        """Cancel a demote/promote request id unless it ran: what became of it."""
        kw = {"timeout": timeout} if timeout is not None else {}
        resp = self._request("POST", f"/clusters/{cluster}/requests/{request_id}/cancel", **kw)
        return RequestState.model_validate(resp.json())

    def fence(self, cluster: str, req: FenceRequest) -> FenceResult:
        resp = self._request("POST", f"/clusters/{cluster}/fence", json=req.model_dump(mode="json"), timeout=60)
        return FenceResult.model_validate(resp.json())

    def preserve(self, cluster: str, req: PreserveRequest) -> PreserveResult:
        resp = self._request("POST", f"/clusters/{cluster}/preserve", json=req.model_dump(mode="json"),
                             timeout=300)
        return PreserveResult.model_validate(resp.json())

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
