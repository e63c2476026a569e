"""HTTP routes of the region agent (see ``pgcrdr.agentapi.client`` for the list). Routes only:
the work is done by ``RegionRuntime``."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pgcrdr.agentapi.models import (
    BackupStatus,
    ClusterSpec,
    ClusterStatus,
    DemoteRequest,
    DemoteResult,
    FenceRequest,
    FenceResult,
    KillResult,
    LsnInfo,
    PreserveRequest,
    PreserveState,
    PromoteRequest,
    PromoteResult,
    RebuildRequest,
    RebuildState,
    RegionHealth,
    RequestState,
    SessionsInfo,
)
from pgcrdr.agent.errors import Conflict, NotFound, Timeout
from pgcrdr.agent.runtime import RegionRuntime
from pgcrdr.agent.validation import source_problems, spec_problems


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


def spec_problems_of_source(req: DemoteRequest | FenceRequest) -> list[str]:
    return source_problems(req.standby_of) if req.standby_of is not None else []


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

    # --- CRDR primitives: 404 unknown cluster, 409 refused as things are now (nothing changed),
    # 504 a bounded wait gave up (the message says what was left as it is), 400 bad input.
    def crdr_call(cluster: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(cluster, *args)
        except NotFound:
            raise ApiError(404, f"cluster {cluster!r} not found in region {runtime.region.cloud_name}") from None
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None
        except Timeout as exc:
            raise ApiError(504, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/clusters/{cluster}/lsn")
    def get_lsn(cluster: str, at_least: str | None = Query(None, pattern=r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"),
                wait: float = Query(0.0, ge=0, le=10)) -> LsnInfo:
        """The leader's positions; with ``at_least``, answered as soon as the leader has
        received (a standby) or written (a writer) that far, or after ``wait`` seconds with
        whatever it has then (the caller compares)."""
        return crdr_call(cluster, runtime.lsn, at_least, wait)

    @app.get("/clusters/{cluster}/sessions")
    def get_sessions(cluster: str) -> SessionsInfo:
        return crdr_call(cluster, runtime.sessions)

    @app.post("/clusters/{cluster}/checkpoint")
    def checkpoint(cluster: str) -> LsnInfo:
        return crdr_call(cluster, runtime.checkpoint)

    @app.post("/clusters/{cluster}/demote")
    def demote(cluster: str, req: DemoteRequest) -> DemoteResult:
        problems = [p for p in spec_problems_of_source(req) if p]
        if problems:
            raise ApiError(400, "; ".join(problems))
        return crdr_call(cluster, runtime.demote, req)

    @app.post("/clusters/{cluster}/promote")
    def promote(cluster: str, req: PromoteRequest) -> PromoteResult:
        return crdr_call(cluster, runtime.promote, req)

    @app.post("/clusters/{cluster}/requests/{request_id}/cancel")
    def cancel_request(cluster: str, request_id: str) -> RequestState:
        if not 1 <= len(request_id) <= 64:
            raise ApiError(400, "request id must be 1 to 64 characters")
        return crdr_call(cluster, runtime.cancel_request, request_id)

    @app.post("/clusters/{cluster}/fence")
    def fence(cluster: str, req: FenceRequest) -> FenceResult:
        if req.standby_of is not None:
            problems = spec_problems_of_source(req)
            if problems:
                raise ApiError(400, "; ".join(problems))
        return crdr_call(cluster, runtime.fence, req)

    @app.post("/clusters/{cluster}/preserve")
    def preserve(cluster: str, req: PreserveRequest) -> PreserveState:
        return crdr_call(cluster, runtime.preserve, req)

    @app.get("/clusters/{cluster}/preserve")
    def get_preserve(cluster: str) -> PreserveState:
        st = crdr_call(cluster, runtime.get_preserve)
        if st is None:
            raise ApiError(404, f"cluster {cluster!r} has never been preserved")
        return st

    @app.post("/clusters/{cluster}/rebuild")
    def rebuild(cluster: str, req: RebuildRequest) -> RebuildState:
        problems = source_problems(req.source) if req.source is not None else []
        if problems:
            raise ApiError(400, "; ".join(problems))
        return crdr_call(cluster, runtime.rebuild, req)

    @app.get("/clusters/{cluster}/rebuild")
    def get_rebuild(cluster: str) -> RebuildState:
        st = crdr_call(cluster, runtime.get_rebuild)
        if st is None:
            raise ApiError(404, f"cluster {cluster!r} has never been rebuilt")
        return st

    @app.get("/clusters/{cluster}/backups")
    def get_backups(cluster: str) -> BackupStatus:
        return crdr_call(cluster, runtime.backup_status)

    @app.post("/clusters/{cluster}/backups")
    def request_backup(cluster: str, type: str = Query("full", pattern="^(full|diff|incr)$")) -> BackupStatus:  # noqa: A002
        return crdr_call(cluster, runtime.request_backup, type)

    @app.post("/region/outage")
    def region_outage() -> dict[str, Any]:
        runtime.region_outage()
        return {"message": f"region {runtime.region.cloud_name}: every process is being killed, the agent included; "
                           "the disk is kept"}

    return app
