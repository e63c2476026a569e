"""HTTP routes of the region agent (see ``pgcrdr.agent.client`` for the list). Routes only:
the work is done by ``RegionRuntime``."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pgcrdr.agent.models import ClusterSpec, ClusterStatus, KillResult, RegionHealth
from pgcrdr.agent.runtime import Conflict, NotFound, RegionRuntime
from pgcrdr.agent.validation import spec_problems


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


def create_app(runtime: RegionRuntime, token: str) -> FastAPI:
    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "missing or wrong agent token (Authorization: Bearer <token>)")

    app = FastAPI(title=f"pgcrdr region agent ({runtime.region.cloud_name})",
                  dependencies=[Depends(require_token)])

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"message": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"message": _describe_validation(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"message": f"internal error of the region agent: {exc}"}, status_code=500)

    @app.get("/health")
    def health() -> RegionHealth:
        return runtime.health()

    @app.get("/clusters")
    def list_clusters() -> dict[str, Any]:
        return {"clusters": [s.model_dump(mode="json") for s in runtime.list_status()]}

    @app.put("/clusters/{cluster}")
    def put_cluster(cluster: str, spec: ClusterSpec) -> ClusterStatus:
        problems = spec_problems(spec, cluster)
        if problems:
            raise ApiError(400, "; ".join(problems))
        try:
            return runtime.put_spec(spec)
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None

    @app.get("/clusters/{cluster}")
    def get_cluster(cluster: str) -> ClusterStatus:
        try:
            return runtime.get_status(cluster)
        except NotFound:
            raise ApiError(404, f"cluster {cluster!r} not found in region {runtime.region.cloud_name}") from None

    @app.delete("/clusters/{cluster}")
    def delete_cluster(cluster: str) -> dict[str, Any]:
        try:
            killed = runtime.delete(cluster)
        except NotFound:
            raise ApiError(404, f"cluster {cluster!r} not found in region {runtime.region.cloud_name}") from None
        return {"message": f"cluster {cluster} deleted", "killed_pids": killed}

    @app.post("/clusters/{cluster}/nodes/{node}/kill")
    def kill_node(cluster: str, node: str,
                  restart_after: float = Query(30.0, ge=0, le=86400)) -> KillResult:
        try:
            return runtime.kill_node(cluster, node, restart_after)
        except NotFound:
            raise ApiError(404, f"node {node!r} of cluster {cluster!r} not found") from None

    return app
