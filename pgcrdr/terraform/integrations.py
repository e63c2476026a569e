"""Resource ``aiven_service_integration``; ``integration_type = "disaster_recovery"`` manages a CRDR pair.

``source_service_name`` is the service that should be active, ``destination_service_name`` the
passive one. Unlike the real provider, changing the direction is an in-place update that moves the
writer (switchover, switchback, or the failback of a failed primary: restore, then promote), and
apply returns only once both services are RUNNING with the requested roles.
"""

from __future__ import annotations

import time
from typing import Any

from tf.iface import (
    CreateContext,
    DeleteContext,
    ImportContext,
    PlanContext,
    ReadContext,
    Resource,
    UpdateContext,
)
from tf.schema import Attribute, Schema
from tf.types import Bool, Number, String, Unknown

from pgcrdr.terraform import mapping
from pgcrdr.terraform.client import ApiClient, ApiError, WaitTimeout, summary, wait_until
from pgcrdr.terraform.services import POLL_S, _Base

# Building a copy, restoring a failed primary or switching roles: bounded like the real provider's 20 min.
MOVE_TIMEOUT_S = 20 * 60
# A promote (after a restore, or a switchover) can be refused for a moment while replication catches
# up or another operation finishes (409, "retry"): retried for this long, then the server's message.
PROMOTE_RETRY_S = 60


class ServiceIntegration(_Base, Resource):
    @classmethod
    def get_name(cls) -> str:
        return "service_integration"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(version=0, description="Service integration (pgcrdr: disaster_recovery)", attributes=[
            Attribute("id", String(), computed=True, description="PROJECT/INTEGRATION_ID"),
            Attribute("integration_id", String(), computed=True),
            Attribute("project", String(), required=True, requires_replace=True),
            Attribute("integration_type", String(), required=True, requires_replace=True,
                      description="disaster_recovery"),
            # Not ForceNew (unlike the real provider): swapping them moves the writer in place.
            Attribute("source_service_name", String(), optional=True, computed=True,
                      description="The service that should be active"),
            Attribute("destination_service_name", String(), optional=True, computed=True,
                      description="The service that should be passive"),
            Attribute("source_service_project", String(), optional=True, computed=True, requires_replace=True),
            # pgcrdr extension (disaster_recovery): the pair fails over by itself (needs writer leases)
            Attribute("automatic_failover_enabled", Bool(), optional=True, computed=True,
                      description="pgcrdr: fail the pair over without a request when its active region is silent"),
            Attribute("automatic_failover_grace_seconds", Number(), optional=True, computed=True,
                      description="pgcrdr: seconds without an answer from the active region before failing over"),
            Attribute("automatic_failover_max_data_loss_bytes", Number(), optional=True, computed=True,
                      description="pgcrdr: fail over by itself only if at most this many bytes are given up"),
            Attribute("destination_service_project", String(), optional=True, computed=True,
                      requires_replace=True),
        ])

    def plan(self, ctx: PlanContext, current: dict | None, planned: dict) -> dict:
        if current is not None and mapping.config_changed(
                current, planned, ("source_service_name", "destination_service_name")):
            planned["id"] = Unknown
            planned["integration_id"] = Unknown
        return planned

    def create(self, ctx: CreateContext, planned: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return None
        project = planned["project"]
        try:
            integ = make_active(client, project, planned)
            apply_automatic_failover(client, project, planned)
            return with_automatic_failover(client, mapping.integration_state(integ, project))
        except (ApiError, WaitTimeout, ValueError) as exc:
            ctx.diagnostics.add_error(_summary(planned, exc), getattr(exc, "where", ""))
            return None

    def read(self, ctx: ReadContext, current: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return current
        project = current["project"]
        try:
            integ = client.get_integration(project, current["integration_id"])
            if integ is None:
                integ = _adopt(client, project, current.get("source_service_name"),
                               current.get("destination_service_name"))
            return None if integ is None else with_automatic_failover(client, mapping.integration_state(integ, project))
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Reading integration {current['integration_id']} failed: {exc.message}",
                                      exc.where)
            return current

    def update(self, ctx: UpdateContext, current: dict, planned: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return current
        project = current["project"]
        try:
            old = {current.get("source_service_name"), current.get("destination_service_name")}
            new = {planned.get("source_service_name"), planned.get("destination_service_name")}
            if old != new:  # another pair altogether: this object goes, the new pair is made
                client.delete_integration(project, current["integration_id"])
            integ = make_active(client, project, planned)
            apply_automatic_failover(client, project, planned)
            return with_automatic_failover(client, mapping.integration_state(integ, project))
        except (ApiError, WaitTimeout, ValueError) as exc:
            ctx.diagnostics.add_error(_summary(planned, exc), getattr(exc, "where", ""))
            return current

    def delete(self, ctx: DeleteContext, current: dict) -> None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return None
        try:  # removes the object only: both services keep their roles and keep replicating
            client.delete_integration(current["project"], current["integration_id"])
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Deleting integration {current['integration_id']} failed: {exc.message}",
                                      exc.where)
        return None

    def import_(self, ctx: ImportContext, id: str) -> dict | None:
        got = self._import_fetch(ctx, id, "INTEGRATION_ID",
                                 lambda client, project, iid: client.get_integration(project, iid))
        if got is None:
            return None
        project, integration_id, integ = got
        if integ is None:
            ctx.diagnostics.add_error(f"Cannot import {id}: service integration {integration_id} does not exist")
            return None
        client = self._client(ctx.diagnostics)
        state = mapping.integration_state(integ, project)
        return state if client is None else with_automatic_failover(client, state)


def apply_automatic_failover(client: ApiClient, project: str, planned: dict) -> None:
    """Set the pair's automatic failover when the configuration says anything about it (the fields
    it leaves out keep their current values)."""
    given = {api: planned.get(attr) for attr, api in mapping.AF_FIELDS.items()
             if planned.get(attr) is not None and planned.get(attr) is not Unknown}
    if not given or planned.get("integration_type") != "disaster_recovery":
        return
    src = planned["source_service_name"]
    current = client.disaster_recovery(project, src).get("automatic_failover") or {}
    body = {**{k: current[k] for k in ("enabled", "grace_seconds", "max_data_loss_bytes") if k in current}, **given}
    if "max_data_loss_bytes" in body:
        body["max_data_loss_bytes"] = int(body["max_data_loss_bytes"])
    client.request("PUT", f"/v1/project/{project}/service/{src}/disaster-recovery", {"automatic_failover": body})


def with_automatic_failover(client: ApiClient, state: dict) -> dict:
    """``state`` with the pair's automatic failover as the API shows it."""
    if state.get("integration_type") != "disaster_recovery":
        return state
    cfg = client.disaster_recovery(state["project"], state["source_service_name"]).get("automatic_failover") or {}
    return {**state, **{attr: cfg.get(api) for attr, api in mapping.AF_FIELDS.items()}}


def _summary(planned: dict, exc: Exception) -> str:
    what = f"{planned.get('source_service_name')} -> {planned.get('destination_service_name')}"
    return f"disaster_recovery {what} failed: {getattr(exc, 'message', exc)}"


def _adopt(client: ApiClient, project: str, src: str | None, dst: str | None) -> dict | None:
    """The pair's current integration object, when the one in the state was replaced (e.g. a reversed
    integration created through the API). None when there is none."""
    if not src or not dst:
        return None
    for name in (src, dst):
        if client.find_service(project, name) is None:
            continue
        found = mapping.find_dr_integration(client.service_integrations(project, name), src, dst)
        if found is not None:
            return found
    return None


def make_active(client: ApiClient, project: str, planned: dict) -> dict:
    """Make ``source_service_name`` the active side and ``destination_service_name`` its passive copy,
    whatever the current roles; wait until both are RUNNING in those roles. Returns the integration."""
    itype, src, dst = planned["integration_type"], planned.get("source_service_name"), \
        planned.get("destination_service_name")
    body = {"integration_type": itype, "source_service": src, "dest_service": dst}
    if itype != "disaster_recovery":
        return client.create_integration(project, body)  # the server says what it supports
    if not src or not dst:
        raise ValueError("A disaster_recovery integration needs source_service_name and destination_service_name")
    source, dest = client.get_service(project, src), client.get_service(project, dst)
    peer = client.disaster_recovery(project, src).get("peer_service")
    move = mapping.plan_dr_move(source, dest, peer)
    seen_ops = _op_ids(client, project, src)
    if move.kind == "adopt":
        existing = mapping.find_dr_integration(client.service_integrations(project, src), src, dst)
        integ = existing if existing and existing["source_service"] == src else client.create_integration(
            project, body)
    elif move.kind == "failback":
        client.update_service(project, src, {"disaster_recovery_role": "passive"})
        _wait_roles(client, project, src, dst, seen_ops, f"{src} to be restored as a passive copy of {dst}",
                    lambda s, d: s.get("state") == "RUNNING" and s.get("disaster_recovery_role") == "passive")
        integ = _promote(client, project, body)
    elif move.kind == "switch":
        integ = _promote(client, project, body)
    else:  # pair: a refusal (another peer, same cloud) is final
        integ = client.create_integration(project, body)
    _wait_roles(client, project, src, dst, seen_ops, f"{src} to be active and {dst} passive",
                lambda s, d: mapping.roles_in_place(s, d))
    return client.get_integration(project, integ["service_integration_id"]) or integ


def _promote(client: ApiClient, project: str, body: dict) -> dict:
    """POST the integration that makes its source active (409s retried for a bounded time)."""
    deadline = time.monotonic() + PROMOTE_RETRY_S
    while True:
        try:
            return client.create_integration(project, body)
        except ApiError as exc:
            if exc.status != 409 or time.monotonic() >= deadline:
                raise
            time.sleep(POLL_S)


def _op_ids(client: ApiClient, project: str, name: str) -> set[str]:
    dr = client.disaster_recovery(project, name)
    ops = list(dr.get("history") or []) + ([dr["operation"]] if dr.get("operation") else [])
    return {o["operation_id"] for o in ops}


def _wait_roles(client: ApiClient, project: str, src: str, dst: str, seen_ops: set[str], what: str,
                done: Any) -> None:
    """Wait until ``done(source, dest)`` holds and no operation runs on the pair; fail at once with
    the operation's message if one started by this request failed."""
    def check() -> tuple[bool, str]:
        s, d = client.find_service(project, src), client.find_service(project, dst)
        dr = client.disaster_recovery(project, src) if s is not None else {}
        running = dr.get("operation")
        for op in dr.get("history") or []:
            if op["operation_id"] not in seen_ops and op.get("state") in ("failed", "undone"):
                # undone: the move could not be completed safely and the old writer writes again
                raise ApiError(None, f"The {op['kind']} operation {op['state']}: {op.get('message')}")
        now = f"{summary(s)}, {summary(d)}" + (f", {running['kind']} running" if running else "")
        return running is None and s is not None and d is not None and bool(done(s, d)), now

    wait_until(what, check, timeout=MOVE_TIMEOUT_S, interval=POLL_S)
