"""The Aiven REST API subset served by pgcrdr (see ../shared/docs/api-contract.md).

Routes validate and record intent through :class:`ServiceManager`, then wake the reconciler.
Every error is ``{"message": ..., "errors": [{"message": ..., "status": N}]}``; a user's
mistake is a 4xx, never a 500 or a traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pgcrdr.api import schemas as S
from pgcrdr.api.bodies import BodyLimitMiddleware, json_body
from pgcrdr.api.events import EventLogMiddleware, events_router
from pgcrdr.api.metrics import metrics_router
from pgcrdr.api.openapi import install_openapi
from pgcrdr.api.replica import ReplicaHeadersMiddleware
from pgcrdr.api.serialize import (
    backups_response,
    dr_status_json,
    drill_json,
    integration_json,
    project_json,
    service_json,
)
from pgcrdr.api.tokens import tokens_router
from pgcrdr.config import Settings
from pgcrdr.controlplane import catalog, crdr
from pgcrdr.controlplane.errors import Refused, clip
from pgcrdr.controlplane.lag import LagHistory
from pgcrdr.controlplane.records import DrillRecord
from pgcrdr.controlplane.services import ServiceManager, now_rfc3339
from pgcrdr.controlplane.store import Store, StoreError, verify_password
from pgcrdr.security.tokens import new_token
from pgcrdr.writer_lease import lease_store

log = logging.getLogger("pgcrdr.api")


# The last guard on the size of an answer: a message quotes at most a short prefix of any value
# the user sent (``clip``), so only a message built carelessly is ever cut here.
MAX_MESSAGE_CHARS = 1000


def error_body(status: int, message: str) -> dict:
    message = clip(message, MAX_MESSAGE_CHARS)
    return {"message": message, "errors": [{"message": message, "status": status}]}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        # loc may hold the user's own keys, msg may quote the user's value: both are clipped.
        loc = ".".join(clip(x) for x in e.get("loc", ()) if x not in ("body",))
        if e.get("type") == "json_invalid":
            return "Malformed JSON in request body"
        parts.append(f"{clip(loc or 'body')}: {clip(e.get('msg'))}")
        if len(parts) == 5:
            break
    return "Invalid request: " + "; ".join(parts)


class Context:
    def __init__(self, settings: Settings, store: Store, manager: ServiceManager, wake: Any):
        self.settings = settings
        self.store = store
        self.manager = manager
        self.wake = wake


def create_app(
    settings: Settings, store: Store, wake: Any = lambda: None, reconcile_now: Any = lambda project, name: None,
    endpoints_enabled: bool = False, lag: LagHistory | None = None, leader: Callable[[], str] | None = None,
) -> FastAPI:
    """``leader``: the name of the control-plane replica that leads (several replicas on etcd),
    sent with every answer as ``X-Pgcrdr-Leader`` beside this replica's ``X-Pgcrdr-Replica``."""
    manager = ServiceManager(store, settings)
    ctx = Context(settings, store, manager, wake)
    app = FastAPI(
        title="pgcrdr",
        description="Aiven-compatible API for PostgreSQL cross-region disaster recovery",
        version="0.1.0",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_openapi(app, clouds=[r.cloud_name for r in settings.regions])
    # Every body the app reads, on any route (the console's included), is bounded; see bodies.py.
    app.add_middleware(BodyLimitMiddleware, error_body=error_body)
    # Every mutating /v1 request goes to the project's event log (outermost: refusals included).
    app.add_middleware(EventLogMiddleware, store=store)
    if leader is not None:
        app.add_middleware(ReplicaHeadersMiddleware, replica=settings.control_host, leader=leader)

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"No such API endpoint: {clip(request.method)} {clip(request.url.path)}")
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route matching the path only; a path
            # served by several routes (GET and POST /v1/project) allows all their methods.
            response = error_response(405, f"Method {clip(request.method)} is not allowed on {clip(request.url.path)}")
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
            return response
        response = error_response(exc.status_code, clip(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    def _allowed_methods(request: Request) -> list[str]:
        methods: set[str] = set()
        for route in app.router.routes:
            match, _ = route.matches({**request.scope, "method": "GET"})
            route_methods = getattr(route, "methods", None)  # Mount and WebSocketRoute have none
            if match != Match.NONE and route_methods:
                methods.update(route_methods)
        return sorted(methods)

    @app.exception_handler(StoreError)
    async def _store_busy(_: Request, exc: StoreError) -> JSONResponse:
        # Nothing was changed (or, said so, an etcd write's outcome is unknown): worth retrying.
        return error_response(503, str(exc))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error: {type(exc).__name__}; see the pgcrdr log")

    def auth(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise Refused(401, "Authentication required: send 'Authorization: aivenv1 TOKEN' (or Bearer TOKEN)")
        if scheme.lower() not in ("aivenv1", "bearer") or not token.strip():
            raise Refused(401, "Unsupported Authorization header: use 'aivenv1 TOKEN' or 'Bearer TOKEN'")
        if not store.token_valid(token.strip()):
            raise Refused(403, "Invalid or expired API token")
        return token.strip()

    Auth = Depends(auth)
    app.include_router(events_router(store, auth))
    app.include_router(tokens_router(store, auth, now_rfc3339))
    app.include_router(metrics_router(store, auth))

    # --- auth --------------------------------------------------------------------------
    @app.post("/v1/userauth", responses=S.ok(S.UserAuthResponse, 400, 403, 413),
              openapi_extra=S.body_spec(S.UserAuthRequest))
    async def userauth(request: Request) -> dict:
        body = S.check_body(S.UserAuthRequest, await json_body(request))
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise Refused(400, "email and password are required")
        if not await run_in_threadpool(_login, email, password):  # scrypt: off the event loop
            raise Refused(403, "Authentication failed")
        token = new_token(32)
        await run_in_threadpool(store.add_token, token, f"login {email}", now_rfc3339())
        return {"token": token, "state": "active", "user": await run_in_threadpool(_user_json, email)}

    def _login(email: str, password: str) -> bool:
        stored_email = store.get_meta("admin_email")
        stored_hash = store.get_meta("admin_password_hash") or ""
        return email == stored_email and verify_password(password, stored_hash)

    def _user_json(email: str | None) -> dict:
        return {"user": email, "user_email": email, "real_name": "pgcrdr admin", "state": "active",
                "auth": ["password"], "projects": [p.name for p in store.list_projects()]}

    @app.get("/v1/me", responses=S.ok(S.MeResponse))
    def me(_: str = Auth) -> dict:
        return {"user": _user_json(store.get_meta("admin_email"))}

    # --- projects ----------------------------------------------------------------------
    @app.get("/v1/project", responses=S.ok(S.ProjectListResponse))
    def list_projects(_: str = Auth) -> dict:
        projects = store.list_projects()
        return {
            "projects": [project_json(p) for p in projects],
            "project_membership": {p.name: "admin" for p in projects},
            "project_memberships": {p.name: ["admin"] for p in projects},
        }

    @app.post("/v1/project", responses=S.ok(S.ProjectResponse, 400, 409, 413),
              openapi_extra=S.body_spec(S.ProjectCreateRequest))
    async def create_project(request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.ProjectCreateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            return {"project": project_json(manager.create_project(body.get("project")))}

        return await run_in_threadpool(work)

    @app.get("/v1/project/{project}", responses=S.ok(S.ProjectResponse, 404))
    def get_project(project: str, _: str = Auth) -> dict:
        return {"project": project_json(manager.project(project))}

    @app.get("/v1/project/{project}/kms/ca", responses=S.ok(S.CertificateResponse, 404))
    def project_ca(project: str, _: str = Auth) -> dict:
        return {"certificate": manager.project(project).ca_cert_pem}

    # --- catalog -----------------------------------------------------------------------
    def clouds() -> dict:
        return {"clouds": [catalog.cloud_json(r) for r in settings.regions]}

    @app.get("/v1/clouds", responses=S.ok(S.CloudsResponse))
    def public_clouds() -> dict:
        return clouds()

    @app.get("/v1/project//clouds", include_in_schema=False)
    def clouds_no_project() -> dict:  # avn with no project configured asks this path
        return clouds()

    @app.get("/v1/project/{project}/clouds", responses=S.ok(S.CloudsResponse, 404))
    def project_clouds(project: str, _: str = Auth) -> dict:
        manager.project(project)
        return clouds()

    @app.get("/v1/service_types", responses=S.ok(S.ServiceTypesResponse))
    def public_service_types() -> dict:
        return {"service_types": catalog.service_types_json(settings.regions)}

    @app.get("/v1/project/{project}/service_types", responses=S.ok(S.ServiceTypesResponse, 404))
    def service_types(project: str, _: str = Auth) -> dict:
        manager.project(project)
        return {"service_types": catalog.service_types_json(settings.regions)}

    @app.get("/v1/project/{project}/service-types/{stype}", responses=S.ok(S.ServiceTypeResponse, 404))
    def service_type(project: str, stype: str, _: str = Auth) -> dict:
        manager.project(project)
        if stype not in catalog.SERVICE_TYPES:
            raise Refused(404, f"Service type {clip(stype)} does not exist; available service types: pg")
        return catalog.SERVICE_TYPES[stype]

    @app.get("/v1/project/{project}/service-types/{stype}/plans/{plan}", responses=S.ok(S.PlanResponse, 404))
    def service_plan(project: str, stype: str, plan: str, _: str = Auth) -> dict:
        manager.project(project)
        if stype not in catalog.SERVICE_TYPES or plan not in catalog.PLANS:
            raise Refused(404, f"Plan {clip(stype)}:{clip(plan)} does not exist")
        return catalog.plan_detail_json(catalog.PLANS[plan])

    @app.get("/v1/service_versions", responses=S.ok(S.ServiceVersionsResponse))
    def service_versions() -> dict:
        return {
            "service_versions": [
                {"service_type": "pg", "major_version": v, "state": "available",
                 "aiven_end_of_life_time": None, "upstream_end_of_life_time": None}
                for v in catalog.PG_VERSIONS
            ]
        }

    @app.get("/v1/account/{account}/service_versions", responses=S.ok(S.ServiceVersionsResponse))
    def account_service_versions(account: str, _: str = Auth) -> dict:
        return service_versions()

    @app.get("/v1/project/{project}/vpcs", responses=S.ok(S.VpcsResponse, 404))
    def vpcs(project: str, _: str = Auth) -> dict:
        manager.project(project)
        return {"vpcs": []}

    @app.get("/v1/project/{project}/static-ips", responses=S.ok(S.StaticIpsResponse, 404))
    def static_ips(project: str, _: str = Auth) -> dict:
        manager.project(project)
        return {"static_ips": []}

    @app.get("/v1/project/{project}/integration_types", responses=S.ok(S.IntegrationTypesResponse, 404))
    def integration_types(project: str, _: str = Auth) -> dict:
        manager.project(project)
        return {"integration_types": catalog.INTEGRATION_TYPES}

    # --- services ----------------------------------------------------------------------
    def out(svc: Any) -> dict:
        integrations = [i for i in store.list_integrations(svc.project) if svc.name in (i.source, i.dest)]
        return service_json(svc, manager.project(svc.project), settings, integrations=integrations,
                            endpoints_enabled=endpoints_enabled)

    @app.get("/v1/project/{project}/service", responses=S.ok(S.ServiceListResponse, 404))
    def list_services(project: str, _: str = Auth) -> dict:
        return {"services": [out(s) for s in manager.list_services(project)]}

    @app.post("/v1/project/{project}/service", responses=S.ok(S.ServiceResponse, 400, 404, 409, 413),
              openapi_extra=S.body_spec(S.ServiceCreateRequest))
    async def create_service(project: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.ServiceCreateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            svc = manager.create_service(project, body)
            # Push to the region right away: the answer then carries the service's endpoints.
            reconcile_now(project, svc.name)
            ctx.wake()
            return {"service": out(store.get_service(project, svc.name) or svc)}

        return await run_in_threadpool(work)

    @app.get("/v1/project/{project}/service/{service}", responses=S.ok(S.ServiceResponse, 404))
    def get_service(project: str, service: str, _: str = Auth) -> dict:
        return {"service": out(manager.service(project, service))}

    @app.put("/v1/project/{project}/service/{service}", responses=S.ok(S.ServiceResponse, 400, 403, 404, 409, 413),
             openapi_extra=S.body_spec(S.ServiceUpdateRequest, required=False))
    async def update_service(project: str, service: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.ServiceUpdateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            role = body.pop("disaster_recovery_role", None)
            if body.pop("disaster_recovery_promote_to_master", None) is True:  # the older spelling
                role = role or "active"
            if role is not None and not isinstance(role, str):
                raise Refused(400, "disaster_recovery_role must be one of: active, passive, failed")
            # pgcrdr extension, for rehearsals and benchmarks: force the failback restore's source
            failback_source = body.pop("failback_source", None)
            if failback_source is not None:
                if failback_source not in crdr.FAILBACK_SOURCES:
                    raise Refused(400, f"failback_source must be one of: {', '.join(crdr.FAILBACK_SOURCES)}")
                if role != "passive":
                    raise Refused(400, "failback_source goes with disaster_recovery_role passive "
                                       "(restoring a failed primary)")
            svc = manager.service(project, service)
            if svc.dr_role is not None and "powered" in body:
                # Terraform sends powered=true on every update. A pair member's power follows its DR role
                # (a failed primary returns with role passive), so only an explicit power-off is refused.
                if body["powered"] is False:
                    raise Refused(409, f"{service} is part of a disaster recovery pair and cannot be powered off; "
                                       "delete the recovery service first or use the disaster_recovery_role")
                body.pop("powered")
            if role is None:
                svc = manager.update_service(project, service, body)
            else:
                # The other fields and the role change in one transaction: a refused role change (or a
                # refused field) leaves the service exactly as it was.
                crdr.update_and_request_role(store, project, service, manager.service_change(body), role,
                                             failback_source=failback_source)
                svc = manager.service(project, service)
            ctx.wake()
            return {"service": out(svc)}

        return await run_in_threadpool(work)

    @app.delete("/v1/project/{project}/service/{service}", responses=S.ok(S.Message, 403, 404, 409))
    def delete_service(project: str, service: str, _: str = Auth) -> dict:
        manager.delete_service(project, service)
        ctx.wake()
        return {"message": f"Service {service} is being terminated"}

    @app.get("/v1/project/{project}/service/{service}/integration", responses=S.ok(S.IntegrationListResponse, 404))
    def service_integrations(project: str, service: str, _: str = Auth) -> dict:
        manager.service(project, service)
        return {"service_integrations": [integration_json(i) for i in store.list_integrations(project)
                                         if service in (i.source, i.dest)]}

    @app.get("/v1/project/{project}/service/{service}/disaster-recovery",
             responses=S.ok(S.DisasterRecoveryStatus, 404))
    def disaster_recovery(project: str, service: str, _: str = Auth) -> dict:
        svc = manager.service(project, service)
        return dr_status_json(svc, store)

    @app.put("/v1/project/{project}/service/{service}/disaster-recovery",
             responses=S.ok(S.DisasterRecoveryStatus, 400, 404, 409, 413),
             openapi_extra=S.body_spec(S.DisasterRecoveryUpdateRequest))
    async def update_disaster_recovery(project: str, service: str, request: Request, _: str = Auth) -> dict:
        """pgcrdr extension: the pair's automatic failover."""
        body = S.check_body(S.DisasterRecoveryUpdateRequest, await json_body(request))

        def work() -> dict:
            cfg = crdr.parse_automatic_failover(body["automatic_failover"])
            manager.service(project, service)
            crdr.set_automatic_failover(store, project, service, cfg, writer_leases=lease_store(settings) is not None)
            return dr_status_json(manager.service(project, service), store)

        return await run_in_threadpool(work)

    def drill_pair(project: str, service: str) -> Any:
        svc = manager.service(project, service)
        if svc.dr_kind != "primary" or not svc.dr_peer:
            raise Refused(409, f"{service} is not the primary service of a disaster recovery pair; drills are kept "
                               "with a pair's primary service")
        return svc

    @app.get("/v1/project/{project}/service/{service}/disaster-recovery/drills",
             responses=S.ok(S.DrillListResponse, 404, 409))
    def list_drills(project: str, service: str, _: str = Auth) -> dict:
        """pgcrdr extension: the pair's drills (pgcrdr drill), oldest first."""
        drill_pair(project, service)
        return {"drills": [drill_json(d) for d in store.list_drills(project, service)]}

    @app.post("/v1/project/{project}/service/{service}/disaster-recovery/drills",
              responses=S.ok(S.DrillResponse, 400, 404, 409, 413), openapi_extra=S.body_spec(S.DrillCreateRequest))
    async def add_drill(project: str, service: str, request: Request, _: str = Auth) -> dict:
        """pgcrdr extension: keep a drill's report with the pair. Its operations' history is not
        touched: a drill on forks ran none on the pair."""
        body = S.check_body(S.DrillCreateRequest, await json_body(request))

        def work() -> dict:
            drill_pair(project, service)
            rec = DrillRecord(drill_id=uuid.uuid4().hex[:12], project=project, pair=service, kind=body["kind"],
                              in_place=body["in_place"], state=body["state"], create_time=now_rfc3339(),
                              report=body["report"])
            store.put_drill(rec)
            return {"drill": drill_json(rec)}

        return await run_in_threadpool(work)

    @app.get("/v1/project/{project}/service/{service}/backups", responses=S.ok(S.BackupsResponse, 404))
    def backups(project: str, service: str, _: str = Auth) -> dict:
        return backups_response(manager.service(project, service))

    @app.get("/v1/project/{project}/service/{service}/db", responses=S.ok(S.DatabasesResponse, 404))
    def list_databases(project: str, service: str, _: str = Auth) -> dict:
        svc = manager.service(project, service)
        return {"databases": [{"database_name": d} for d in svc.databases], "next": None}

    @app.post("/v1/project/{project}/service/{service}/db", responses=S.ok(S.Message, 400, 404, 409, 413),
              openapi_extra=S.body_spec(S.DatabaseCreateRequest))
    async def create_database(project: str, service: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.DatabaseCreateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            manager.create_database(project, service, body.get("database"))
            ctx.wake()
            return {"message": f"Database {body.get('database')} created"}

        return await run_in_threadpool(work)

    @app.post("/v1/project/{project}/service/{service}/user", responses=S.ok(S.ServiceUserResponse, 400, 404, 409, 413),
              openapi_extra=S.body_spec(S.ServiceUserCreateRequest))
    async def create_user(project: str, service: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.ServiceUserCreateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            user = manager.create_user(project, service, body.get("username"))
            ctx.wake()
            return {"user": {"username": user.username, "password": user.password, "type": user.type}}

        return await run_in_threadpool(work)

    @app.get("/v1/project/{project}/service/{service}/user/{username}", responses=S.ok(S.ServiceUserResponse, 404))
    def get_user(project: str, service: str, username: str, _: str = Auth) -> dict:
        u = manager.user(project, service, username)
        return {"user": {"username": u.username, "password": u.password, "type": u.type}}

    @app.get("/v1/project/{project}/service/{service}/tags", responses=S.ok(S.TagsResponse, 404))
    def get_tags(project: str, service: str, _: str = Auth) -> dict:
        return {"tags": manager.service(project, service).tags}

    @app.put("/v1/project/{project}/service/{service}/tags", responses=S.ok(S.Message, 400, 404, 409, 413),
             openapi_extra=S.body_spec(S.TagsUpdateRequest, required=False))
    async def put_tags(project: str, service: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.TagsUpdateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            manager.set_tags(project, service, body.get("tags", {}))
            return {"message": "tags updated"}

        return await run_in_threadpool(work)

    @app.post("/v1/project/{project}/integration", responses=S.ok(S.IntegrationResponse, 400, 404, 409, 413),
              openapi_extra=S.body_spec(S.IntegrationCreateRequest))
    async def create_integration(project: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.IntegrationCreateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            manager.project(project)
            integ, _op = crdr.create_integration(store, project, body)
            ctx.wake()
            return {"service_integration": integration_json(integ)}

        return await run_in_threadpool(work)

    def _integration(project: str, integration_id: str) -> Any:
        manager.project(project)
        integ = store.get_integration(project, integration_id)
        if integ is None:
            raise Refused(404, f"Service integration {clip(integration_id)} does not exist")
        return integ

    @app.get("/v1/project/{project}/integration/{integration_id}", responses=S.ok(S.IntegrationResponse, 404))
    def get_integration(project: str, integration_id: str, _: str = Auth) -> dict:
        return {"service_integration": integration_json(_integration(project, integration_id))}

    @app.put("/v1/project/{project}/integration/{integration_id}", responses=S.ok(S.IntegrationResponse, 400, 404, 413),
             openapi_extra=S.body_spec(S.IntegrationUpdateRequest, required=False))
    async def put_integration(project: str, integration_id: str, request: Request, _: str = Auth) -> dict:
        body = S.check_body(S.IntegrationUpdateRequest, await json_body(request))

        def work() -> dict:  # store and region calls block: off the event loop
            if body.get("user_config") not in (None, {}):
                raise Refused(400, "disaster_recovery integrations have no user_config")
            return {"service_integration": integration_json(_integration(project, integration_id))}

        return await run_in_threadpool(work)

    @app.delete("/v1/project/{project}/integration/{integration_id}", responses=S.ok(S.Message, 404, 409))
    def delete_integration(project: str, integration_id: str, _: str = Auth) -> dict:
        manager.project(project)
        crdr.delete_integration(store, project, integration_id)
        return {"message": "Service integration deleted; the roles of both services are unchanged"}

    # --- the web console (pgcrdr/console): pages at /, /console/..., polling this API ---------
    from pgcrdr.console import mount_console

    mount_console(app, store=store, settings=settings, auth=Auth, service_out=out, lag=lag or LagHistory())
    return app
