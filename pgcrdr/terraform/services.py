"""Resources ``aiven_pg`` / ``aiven_postgresql`` and the data sources of the same names."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tf.blocks import SetNestedBlock
from tf.iface import (
    CreateContext,
    DataSource,
    DeleteContext,
    ImportContext,
    PlanContext,
    ReadContext,
    ReadDataContext,
    Resource,
    UpdateContext,
)
from tf.schema import Attribute, Block, Schema
from tf.types import Bool, List, Map, Number, String, Unknown

from pgcrdr.terraform import mapping
from pgcrdr.terraform.client import ApiClient, ApiError, WaitTimeout, summary, wait_until

if TYPE_CHECKING:
    from pgcrdr.terraform.provider import AivenProvider

# Bounded waits (the real provider's defaults are 20 minutes for create, update and delete).
CREATE_TIMEOUT_S = 20 * 60
UPDATE_TIMEOUT_S = 20 * 60
DELETE_TIMEOUT_S = 10 * 60
# Terraform deletes both services of a pair at once, but the API only lets the passive copy go
# first: the other one waits this long for its peer to disappear.
PEER_DELETE_WAIT_S = 60
POLL_S = 2.0

# Attributes the user configures; a change to any of them is an update of the service.
CONFIG_KEYS = ("plan", "cloud_name", "termination_protection", "maintenance_window_dow", "maintenance_window_time",
               "pg_user_config", "service_integrations")


def _pg_user_config_block() -> SetNestedBlock:
    pg = SetNestedBlock("pg", Block(attributes=[
        Attribute("max_connections", Number(), optional=True, description="max_connections"),
        Attribute("work_mem", Number(), optional=True, description="work_mem in MB"),
    ], description="postgresql.conf settings"))
    pg.max_items = 1
    block = SetNestedBlock("pg_user_config", Block(attributes=[
        Attribute("pg_version", String(), optional=True, description="PostgreSQL major version"),
        Attribute("admin_username", String(), optional=True, description="Admin role name (at creation only)"),
        Attribute("ip_filter", List(String()), optional=True, description="Allowed client networks"),
        Attribute("service_to_fork_from", String(), optional=True,
                  description="Create the service from this service's backups (at creation only)"),
        Attribute("project_to_fork_from", String(), optional=True,
                  description="The project of service_to_fork_from, when not this one (at creation only)"),
        Attribute("recovery_target_time", String(), optional=True,
                  description="RFC 3339 time the fork restores to; default: now (at creation only)"),
    ], block_types=[pg], description="PostgreSQL settings (user_config)"))
    block.max_items = 1
    return block


def _integrations_block() -> SetNestedBlock:
    return SetNestedBlock("service_integrations", Block(attributes=[
        Attribute("integration_type", String(), required=True, description="disaster_recovery"),
        Attribute("source_service_name", String(), required=True, description="The primary service"),
    ], description="Create this service as a disaster-recovery copy of another one (at creation only)"))


def _computed_attributes() -> list[Attribute]:
    return [
        Attribute("service_type", String(), computed=True, description="Always pg"),
        Attribute("state", String(), computed=True,
                  description="RUNNING, REBUILDING, REBALANCING or POWEROFF (refreshed on every plan)"),
        Attribute("disaster_recovery_role", String(), computed=True,
                  description="active, passive or failed for a member of a CRDR pair, else null"),
        Attribute("service_uri", String(), computed=True, sensitive=True, description="The Service URI"),
        Attribute("service_host", String(), computed=True),
        Attribute("service_port", Number(), computed=True),
        Attribute("service_username", String(), computed=True),
        Attribute("service_password", String(), computed=True, sensitive=True),
        Attribute("components", List(Map(String())), computed=True,
                  description="Endpoints: component, host, port, connection_uri, route, usage, ssl (all strings)"),
    ]


class _Base:
    def __init__(self, provider: AivenProvider):
        self.provider = provider

    def _client(self, diags: Any) -> ApiClient | None:
        client = self.provider.client
        if client is None:
            diags.add_error("The aiven provider is not configured",
                            "Set api_token (or AIVEN_TOKEN) and AIVEN_WEB_URL (or api_url)")
        return client

    def _import_fetch(self, ctx: Any, id: str, label: str, fetch: Any) -> tuple[str, str, Any] | None:
        """``terraform import PROJECT/<label>``: (project, key, what ``fetch(client, project, key)``
        returned), or None with the reason added to the diagnostics."""
        client = self._client(ctx.diagnostics)
        if client is None:
            return None
        try:
            project, key = mapping.split_id(id, label)
            return project, key, fetch(client, project, key)
        except ValueError as exc:
            ctx.diagnostics.add_error(str(exc))
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Cannot import {id}: {exc.message}", exc.where)
        return None


class PgService(_Base, Resource):
    """A PostgreSQL service, as the real provider's ``aiven_pg``."""

    @classmethod
    def get_name(cls) -> str:
        return "pg"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(version=0, description="PostgreSQL service (pgcrdr)", attributes=[
            Attribute("id", String(), computed=True, description="PROJECT/SERVICE_NAME"),
            Attribute("project", String(), required=True, requires_replace=True),
            Attribute("service_name", String(), required=True, requires_replace=True),
            Attribute("plan", String(), required=True, description="e.g. startup-4"),
            Attribute("cloud_name", String(), optional=True, computed=True, description="Region"),
            Attribute("termination_protection", Bool(), optional=True, computed=True),
            Attribute("maintenance_window_dow", String(), optional=True, computed=True),
            Attribute("maintenance_window_time", String(), optional=True, computed=True),
            *_computed_attributes(),
        ], block_types=[_pg_user_config_block(), _integrations_block()])

    # --- plan -----------------------------------------------------------------------------
    def plan(self, ctx: PlanContext, current: dict | None, planned: dict) -> dict:
        if current is None or not mapping.config_changed(current, planned, CONFIG_KEYS):
            return planned
        if current.get("service_integrations") != planned.get("service_integrations"):
            ctx.diagnostics.add_error(
                "service_integrations can only be set when the service is created",
                "To pair or re-pair existing services, use an aiven_service_integration resource with "
                "integration_type = \"disaster_recovery\".",
                path=["service_integrations"],
            )
        # The server decides these; an update may move them.
        for key in mapping.SERVER_COMPUTED:
            if key != "service_type":
                planned[key] = Unknown
        return planned

    # --- CRUD -----------------------------------------------------------------------------
    def create(self, ctx: CreateContext, planned: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return None
        project, name = planned["project"], planned["service_name"]
        try:
            svc = client.create_service(project, mapping.create_body(planned))
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Creating service {name} failed: {exc.message}", exc.where)
            return None
        try:
            svc = _wait_service(client, project, name, CREATE_TIMEOUT_S, lambda s: s.get("state") == "RUNNING",
                                f"service {name} to be RUNNING")
        except (ApiError, WaitTimeout) as exc:
            ctx.diagnostics.add_error(f"Service {name} was created but is not ready", str(exc))
        return mapping.service_state(svc, prior=planned)

    def read(self, ctx: ReadContext, current: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return current
        try:
            svc = client.find_service(current["project"], current["service_name"])
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Reading service {current['service_name']} failed: {exc.message}", exc.where)
            return current
        return None if svc is None else mapping.service_state(svc, prior=current)

    def update(self, ctx: UpdateContext, current: dict, planned: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return current
        project, name = current["project"], current["service_name"]
        body = mapping.update_body(current, planned)
        try:
            if body:
                client.update_service(project, name, body)
            svc = _wait_service(client, project, name, UPDATE_TIMEOUT_S,
                                lambda s: s.get("state") not in ("REBUILDING", "REBALANCING"),
                                f"service {name} to settle")
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Updating service {name} failed: {exc.message}", exc.where)
            return current
        except WaitTimeout as exc:
            ctx.diagnostics.add_error(f"Service {name} was updated but has not settled", str(exc))
            settled = client.find_service(project, name)
            if settled is None:
                return None
            svc = settled
        return mapping.service_state(svc, prior=planned)

    def delete(self, ctx: DeleteContext, current: dict) -> None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return None
        project, name = current["project"], current["service_name"]
        try:
            _delete_service(client, project, name)
        except (ApiError, WaitTimeout) as exc:
            ctx.diagnostics.add_error(f"Deleting service {name} failed: {exc}", getattr(exc, "where", ""))
        return None

    def import_(self, ctx: ImportContext, id: str) -> dict | None:
        got = self._import_fetch(ctx, id, "SERVICE_NAME",
                                 lambda client, project, name: client.get_service(project, name))
        return mapping.service_state(got[2]) if got else None


class PostgresqlService(PgService):
    """``aiven_postgresql``: the name the Aiven CRDR docs use; the same resource as ``aiven_pg``."""

    @classmethod
    def get_name(cls) -> str:
        return "postgresql"


class PgData(_Base, DataSource):
    """Data source ``aiven_pg``: read a service (e.g. its current disaster_recovery_role)."""

    @classmethod
    def get_name(cls) -> str:
        return "pg"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(version=0, attributes=[
            Attribute("id", String(), computed=True),
            Attribute("project", String(), required=True),
            Attribute("service_name", String(), required=True),
            Attribute("plan", String(), computed=True),
            Attribute("cloud_name", String(), computed=True),
            Attribute("termination_protection", Bool(), computed=True),
            Attribute("maintenance_window_dow", String(), computed=True),
            Attribute("maintenance_window_time", String(), computed=True),
            *_computed_attributes(),
        ])

    def read(self, ctx: ReadDataContext, config: dict) -> dict | None:
        client = self._client(ctx.diagnostics)
        if client is None:
            return None
        try:
            return mapping.data_source_state(client.get_service(config["project"], config["service_name"]))
        except ApiError as exc:
            ctx.diagnostics.add_error(f"Reading service {config['service_name']} failed: {exc.message}", exc.where)
            return None


class PostgresqlData(PgData):
    @classmethod
    def get_name(cls) -> str:
        return "postgresql"


def _wait_service(client: ApiClient, project: str, name: str, timeout: float, ready: Any, what: str) -> dict:
    seen: dict[str, Any] = {}

    def check() -> tuple[bool, str]:
        svc = client.get_service(project, name)
        seen["svc"] = svc
        return bool(ready(svc)), summary(svc)

    wait_until(what, check, timeout=timeout, interval=POLL_S)
    return seen["svc"]


def _delete_service(client: ApiClient, project: str, name: str) -> None:
    deadline = time.monotonic() + PEER_DELETE_WAIT_S
    while True:
        try:
            client.delete_service(project, name)
            break
        except ApiError as exc:
            if exc.not_found:
                return
            if exc.status != 409 or time.monotonic() >= deadline or not _peer_goes_first(client, project, name):
                raise
            time.sleep(POLL_S)  # the passive copy goes first (same terraform run); then this one

    def check() -> tuple[bool, str]:
        svc = client.find_service(project, name)
        return svc is None, summary(svc)

    wait_until(f"service {name} to be terminated", check, timeout=DELETE_TIMEOUT_S, interval=POLL_S)


def _peer_goes_first(client: ApiClient, project: str, name: str) -> bool:
    """After a 409 on DELETE: is it worth retrying? Yes when the DR peer of ``name`` is already gone
    (its DELETE raced ours) or is the passive recovery service (which the API lets go first, and
    which the same terraform run is deleting)."""
    try:
        peer = client.disaster_recovery(project, name).get("peer_service")
    except ApiError:
        return False
    if not peer:
        return True  # the pair ended since our DELETE was refused
    try:
        info = client.disaster_recovery(project, peer)
    except ApiError as exc:
        return exc.not_found
    return info.get("disaster_recovery_role") == "passive" and info.get("disaster_recovery_kind") == "recovery"
