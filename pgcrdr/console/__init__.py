"""The web console: server-rendered pages plus a little plain JS that polls the JSON API.

Served by the control plane's FastAPI app (no CDN, no front-end build). Pages are Jinja2
templates; the signed-in token lives in the browser's sessionStorage and every data request
(and every action) goes to the API with it, so the console can do nothing the API would not let
the token do, and a refused action shows the server's own message.

- ``/``                                                sign in (token, or email and password)
- ``/console/project/P``                               the project's services
- ``/console/project/P/service/S``                     a service: state, nodes, URIs, lag, backups
- ``/console/project/P/service/S/disaster-recovery``   Cross-region disaster recovery
- ``/console/api/...``                                 the view models those pages poll (token required)
- ``/console/api/project/P/service/S/events``          the service's recent events, polled by its page (the
  route lives with the event log in ``pgcrdr/api/events.py``)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from pgcrdr.api.serialize import dr_status_json
from pgcrdr.config import Settings
from pgcrdr.controlplane import catalog
from pgcrdr.controlplane.errors import not_found_project, not_found_service
from pgcrdr.controlplane.lag import LagHistory, pair_lag
from pgcrdr.controlplane.records import ServiceRecord
from pgcrdr.controlplane.store import Store
from pgcrdr.console.views import (
    KIND_LABELS,
    automatic_failover_text,
    last_problem,
    node_rows,
    offered_actions,
    offers_json,
    operation_duration_s,
    operation_now,
    recovery_cycle,
    role_label,
    service_uri_note,
    status_message_now,
)

HERE = Path(__file__).resolve().parent


def _summary(svc: dict, kind: str | None, running: dict | None = None, history: list[dict] | None = None,
             now: float | None = None) -> dict:
    """A service as the console shows it (``history`` oldest first: what the pair's operations
    make stale in its status message)."""
    return {
        "service_name": svc["service_name"],
        "cloud_name": svc["cloud_name"],
        "cloud_description": svc["cloud_description"],
        "plan": svc["plan"],
        "state": svc["state"],
        "disaster_recovery_role": svc["disaster_recovery_role"],
        "kind": kind,
        "label": role_label(svc),
        "node_states": svc["node_states"],
        "nodes": node_rows(svc, running),
        "status_message": status_message_now(svc, running, history or [], time.time() if now is None else now),
    }


def mount_console(app: FastAPI, *, store: Store, settings: Settings, auth: Any,
                  service_out: Callable[[ServiceRecord], dict], lag: LagHistory) -> None:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="console-static")

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, context)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def sign_in(request: Request) -> HTMLResponse:
        return page(request, "signin.html", page="signin", project=None, service=None)

    @app.get("/console", include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get("/console/project/{project}", response_class=HTMLResponse, include_in_schema=False)
    def services_page(request: Request, project: str) -> HTMLResponse:
        return page(request, "services.html", page="services", project=project, service=None)

    @app.get("/console/project/{project}/service/{service}", response_class=HTMLResponse, include_in_schema=False)
    def service_page(request: Request, project: str, service: str) -> HTMLResponse:
        return page(request, "service.html", page="service", project=project, service=service, section="overview")

    @app.get("/console/project/{project}/service/{service}/disaster-recovery", response_class=HTMLResponse,
             include_in_schema=False)
    def dr_page(request: Request, project: str, service: str) -> HTMLResponse:
        return page(request, "disaster_recovery.html", page="dr", project=project, service=service,
                    section="dr")

    # --- view models (JSON, token required) -------------------------------------------------
    def _service(project: str, name: str) -> ServiceRecord:
        if store.get_project(project) is None:
            raise not_found_project(project)
        svc = store.get_service(project, name)
        if svc is None or svc.deleting:
            raise not_found_service(name)
        return svc

    @app.get("/console/api/project/{project}/services", include_in_schema=False)
    def services_view(project: str, _: str = auth) -> dict:
        if store.get_project(project) is None:
            raise not_found_project(project)
        return {"services": [_summary(service_out(s), s.dr_kind) for s in store.list_services(project)
                             if not s.deleting]}

    @app.get("/console/api/project/{project}/service/{service}/disaster-recovery", include_in_schema=False)
    def dr_view(project: str, service: str, _: str = auth) -> dict:
        svc = _service(project, service)
        peer = store.get_service(project, svc.dr_peer) if svc.dr_peer else None
        primary, recovery = (peer, svc) if svc.dr_kind == "recovery" and peer is not None else (svc, peer)
        p_json = service_out(primary)
        r_json = service_out(recovery) if recovery is not None else None
        status = dr_status_json(primary, store)
        running, history = status["operation"], status["history"]
        # Durations to the millisecond (the records' timestamps are whole seconds).
        records = {o.operation_id: o for o in store.list_operations(project, primary.name)}
        for o in history:
            rec = records.get(o["operation_id"])
            o["duration_s"] = operation_duration_s(o["steps"], rec.data) if rec is not None else None
        now = time.time()
        done = [o["kind"] for o in history if o["state"] == "done" and o["kind"] not in ("setup", "repair")]
        last_kind = done[-1] if done else None
        offers = offered_actions(p_json, r_json, running)
        p_view = _summary(p_json, "primary" if recovery is not None else None, running, history, now)
        r_view = _summary(r_json, "recovery", running, history, now) if r_json is not None else None
        me_view, peer_view = (p_view, r_view) if svc.name == primary.name else (r_view, p_view)
        view: dict[str, Any] = {
            "service_name": svc.name,
            "primary": p_view,
            "recovery": r_view,
            "service_uri_note": service_uri_note(me_view, peer_view),
            "operation": operation_now(running),
            "problem": last_problem(history),
            "history": list(reversed(history)),
            "kind_labels": KIND_LABELS,
            "actions": offers_json(offers),
            "clouds": [catalog.cloud_json(r) for r in settings.regions if r.cloud_name != primary.cloud],
            "now": now,
            "automatic_failover": automatic_failover_text(status["automatic_failover"]),
        }
        if recovery is not None and r_json is not None:
            cur = pair_lag(primary, recovery, time.time())
            active = next((s for s in (primary, recovery) if s.dr_role == "active"), None)
            view["replication"] = {
                "from": active.name if active else None,
                "to": cur.passive,
                "lag_bytes": cur.lag_bytes,
                "lag_seconds": cur.lag_seconds,
            }
            view["lag_history"] = lag.samples(project, primary.name)
            view["cycle"] = recovery_cycle(p_json, r_json, running, last_kind, offers)
        else:
            view["replication"] = None
            view["lag_history"] = []
            view["cycle"] = None
        return view
