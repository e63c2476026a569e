"""HTTP client the control plane uses to reach a region agent.

Routes served by the agent (``pgcrdr.agent.app``), all JSON, all requiring
``Authorization: Bearer <agent token>``:

    GET    /health                              -> RegionHealth
    GET    /clusters                            -> {"clusters": [ClusterStatus]}
    PUT    /clusters/{cluster}        ClusterSpec -> ClusterStatus   (records intent, converges in background)
    GET    /clusters/{cluster}                  -> ClusterStatus   (404 if unknown)
    DELETE /clusters/{cluster}                  -> {"message": ...} (stops every process, removes files)
    POST   /clusters/{cluster}/nodes/{node}/kill -> KillResult     (SIGKILL Patroni + postmaster; drills)
"""

from __future__ import annotations

import httpx

from pgcrdr.agent.models import ClusterSpec, ClusterStatus, KillResult, RegionHealth


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

    def put_cluster(self, spec: ClusterSpec) -> ClusterStatus:
        resp = self._request("PUT", f"/clusters/{spec.cluster}", json=spec.model_dump(mode="json"))
        return ClusterStatus.model_validate(resp.json())

    def get_cluster(self, cluster: str) -> ClusterStatus | None:
        try:
            resp = self._request("GET", f"/clusters/{cluster}")
        except AgentError as exc:
            if exc.status == 404:
                return None
            raise
        return ClusterStatus.model_validate(resp.json())

    def list_clusters(self) -> list[ClusterStatus]:
        data = self._request("GET", "/clusters").json()
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
