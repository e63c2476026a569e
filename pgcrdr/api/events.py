"""The project event log, as Aiven has it: ``GET /v1/project/P/events`` (``avn events``).

Two sources write it:

- every mutating request under ``/v1`` (POST, PUT, PATCH, DELETE), recorded by
  :class:`EventLogMiddleware` for all routes at once: who (the token's description, never the
  token; or the email of a login), what (event type, method, path, service), and the status it
  got, with the server's message when it was refused. The event is written before the answer's
  first byte leaves, so a client that reads the log right after its request finds it there.
- each operation's start and end, written by the store itself (``Tx.put_operation``).

The store keeps the newest ``EVENTS_KEPT_PER_PROJECT`` events of each project.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgcrdr.api import schemas as S
from pgcrdr.controlplane.errors import clip, not_found_project, not_found_service
from pgcrdr.controlplane.store import EVENTS_KEPT_PER_PROJECT, TOKEN_PREFIX_CHARS, EventRow, Store

log = logging.getLogger("pgcrdr.api.events")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TEE_BYTES = 64 * 1024  # a request body is read for its service's name only up to this size
MAX_LIMIT = EVENTS_KEPT_PER_PROJECT  # a larger limit returns every event kept: it is capped, not refused

_P = r"/v1/project/(?P<project>[^/]*)"
_S = _P + r"/service/(?P<service>[^/]+)"
# (method, path pattern, event type, what it does); the first match wins.
ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    (m, re.compile(rx + r"/?$"), t, d) for m, rx, t, d in [
        ("POST", r"/v1/userauth", "user_login", "Log in"),
        ("POST", r"/v1/access_token", "access_token_create", "Create access token"),
        ("PUT", r"/v1/access_token/[^/]+", "access_token_update", "Update access token"),
        ("DELETE", r"/v1/access_token/[^/]+", "access_token_revoke", "Revoke access token"),
        ("POST", r"/v1/project", "project_create", "Create project"),
        ("POST", _P + r"/service", "service_create", "Create service"),
        ("PUT", _S, "service_update", "Update service"),
        ("DELETE", _S, "service_delete", "Terminate service"),
        ("PUT", _S + r"/tags", "service_tags_update", "Update tags of service"),
        ("POST", _S + r"/db", "database_create", "Create database in service"),
        ("DELETE", _S + r"/db/[^/]+", "database_delete", "Delete database in service"),
        ("POST", _S + r"/user", "service_user_create", "Create user in service"),
        ("PUT", _S + r"/user/[^/]+", "service_user_update", "Update user in service"),
        ("DELETE", _S + r"/user/[^/]+", "service_user_delete", "Delete user in service"),
        ("POST", _S + r"/task", "service_task_create", "Create task in service"),
        ("POST", _P + r"/integration", "service_integration_create", "Create service integration"),
        ("PUT", _P + r"/integration/[^/]+", "service_integration_update", "Update service integration"),
        ("DELETE", _P + r"/integration/[^/]+", "service_integration_delete", "Delete service integration"),
    ]
]
_PROJECT = re.compile(_P + r"(/|$)")
_SERVICE = re.compile(_S + r"(/|$)")


def classify(method: str, path: str) -> tuple[str, str]:
    """The event type and a short description of a mutating request (pure)."""
    for m, rx, event_type, desc in ROUTES:
        if m == method and rx.match(path):
            return event_type, desc
    return f"{method.lower()}_request", f"{method} request"


def describe_request(method: str, path: str, body: dict | None) -> tuple[str, str | None, str, str]:
    """(project, service name, event type, description) of a mutating request (pure). ``body`` is
    the request's JSON object when it was read; only names and requested roles are taken from it,
    never a value that could be a secret."""
    body = body or {}
    event_type, desc = classify(method, path)
    m = _PROJECT.match(path)
    project = m.group("project") if m else ""
    if event_type == "project_create":
        project = _name(body.get("project")) or ""
    sm = _SERVICE.match(path)
    service = sm.group("service") if sm else None
    if event_type == "service_create":
        service = _name(body.get("service_name"))
    elif event_type == "service_integration_create":
        service = _name(body.get("dest_service"))
        desc += f" {_name(body.get('integration_type')) or ''} {_name(body.get('source_service')) or '?'}" \
                f" -> {service or '?'}"
    elif event_type == "user_login":
        desc += f" as {_name(body.get('email')) or '?'}"
    elif event_type == "service_update":
        role = _name(body.get("disaster_recovery_role"))
        if role:
            desc = "Request disaster recovery role"
            desc += f" {role} for service"
        elif body.get("powered") is False:
            desc = "Power off service"
    if service:
        desc += f" {service}"
    return project, service, event_type, desc


def _name(value: Any) -> str | None:
    return clip(value, 80) if isinstance(value, str) else None


def actor_of(store: Store, headers: dict[str, str], body: dict | None, event_type: str) -> str:
    """Who made a request: the token's description (and prefix), never the token itself."""
    if event_type == "user_login":
        return _name((body or {}).get("email")) or "anonymous"
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    if not token:
        return "anonymous"
    info = store.token_info(token)
    if info is None:
        return "unknown token"
    if info.description.startswith("login "):  # a login's token: the user who logged in
        return info.description.removeprefix("login ")
    return f"{info.description} ({info.token_prefix}...)" if info.token_prefix else info.description


class EventLogMiddleware:
    """Records every mutating ``/v1`` request in the project's event log (see the module doc)."""

    def __init__(self, app: ASGIApp, store: Store):
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        recorded = False
        held: Message | None = None  # an error's response start, held until its body gives the message

        async def tee_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request" and size <= MAX_TEE_BYTES:
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
            return message

        async def record(status: int, message: str | None) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            try:
                await run_in_threadpool(self._record, scope, chunks if size <= MAX_TEE_BYTES else [], status, message)
            except Exception:  # noqa: BLE001 - the event log never breaks the request it records
                log.exception("could not record the event of %s %s", scope["method"], scope["path"])

        async def recording_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    held = message
                    return
                await record(message["status"], None)
            elif message["type"] == "http.response.body" and held is not None:
                start, held = held, None
                await record(start["status"], _error_message(message.get("body", b"")))
                await send(start)
            await send(message)

        try:
            await self.app(scope, tee_receive, recording_send)
        except BaseException:
            await record(500, "internal error")
            raise
        if held is not None:  # an error answer without a body
            start, held = held, None
            await record(start["status"], None)
            await send(start)

    def _record(self, scope: Scope, chunks: list[bytes], status: int, message: str | None) -> None:
        method, path = scope["method"], redact_path(scope["path"])
        body = _json_object(b"".join(chunks))
        project, service, event_type, desc = describe_request(method, path, body)
        if project and self.store.get_project(project) is None:
            project = ""  # a request naming no existing project is kept outside any project's log
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        actor = actor_of(self.store, headers, body, event_type)
        result = f"{status}" + (f" {clip(message, 300)}" if message else "")
        self.store.add_event(project, actor, event_type, f"{desc}: {method} {clip(path, 200)} -> {result}",
                             service_name=service)


def redact_path(path: str) -> str:
    """A path fit for the log: a token in it (``avn user logout`` revokes its token by sending it
    in full in ``DELETE /v1/access_token/TOKEN``) is cut to its prefix."""
    head, sep, rest = path.partition("/v1/access_token/")
    if not sep or head:
        return path
    return f"/v1/access_token/{rest[:TOKEN_PREFIX_CHARS]}..." if len(rest) > TOKEN_PREFIX_CHARS else path


def _json_object(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _error_message(raw: bytes) -> str | None:
    body = _json_object(raw)
    message = body.get("message") if body else None
    return message if isinstance(message, str) else None


def event_json(e: EventRow) -> dict:
    """One event as Aiven's API returns it (the fields ``avn events`` prints)."""
    return {"id": str(e.id), "time": e.time, "actor": e.actor, "event_type": e.event_type,
            "service_name": e.service_name, "event_desc": e.event_desc}


def events_router(store: Store, auth: Callable[..., str]) -> APIRouter:
    router = APIRouter()
    Auth = Depends(auth)

    def _project(project: str) -> None:
        if store.get_project(project) is None:
            raise not_found_project(project)

    # Plain ``def`` routes: FastAPI runs them in its threadpool, off the event loop.
    @router.get("/v1/project/{project}/events", responses=S.ok(S.EventsResponse, 400, 404))
    def project_events(project: str, limit: int = Query(
            100, ge=1, description=f"How many of the newest events to return (at least 1; a larger limit than "
                                   f"{MAX_LIMIT}, the events kept per project, returns them all)"),
                       _: str = Auth) -> dict:
        _project(project)
        return {"events": [event_json(e) for e in store.list_events(project, min(limit, MAX_LIMIT))]}

    @router.get("/console/api/project/{project}/service/{service}/events", include_in_schema=False)
    def service_events(project: str, service: str, limit: int = Query(20, ge=1), _: str = Auth) -> dict:
        """A service's recent events, for the console's service page (newest first)."""
        _project(project)
        svc = store.get_service(project, service)
        events = store.list_events(project, min(limit, MAX_LIMIT), service_name=service)
        if svc is None and not events:
            raise not_found_service(service)
        return {"events": [event_json(e) for e in events]}

    return router



