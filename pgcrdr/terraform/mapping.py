"""Pure mapping between the API's JSON and Terraform state, and the CRDR move decision.

No I/O here: every function takes values and returns values, so the unit tests need no server.

`tf` (the provider framework) has no object types and no nested list blocks, so:
- ``components`` is a list of string maps (``port`` and ``ssl`` are strings); HCL reads it the same
  way as the real provider's list of objects (``components[0].host``);
- ``pg_user_config`` and ``service_integrations`` are *set* blocks (the real provider uses lists
  with at most one item): the HCL is written the same way, ``pg_user_config { pg_version = "15" }``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tf.types import Unknown

# Attributes of aiven_pg / aiven_postgresql that the server decides (refreshed on every read).
SERVER_COMPUTED = (
    "service_type", "state", "disaster_recovery_role", "service_uri", "service_host", "service_port",
    "service_username", "service_password", "components",
)
# Attributes the user may set and the server echoes; unset ones take the server's value.
OPTIONAL_COMPUTED = ("cloud_name", "termination_protection", "maintenance_window_dow", "maintenance_window_time")
USER_CONFIG_KEYS = ("pg_version", "admin_username", "ip_filter", "service_to_fork_from", "project_to_fork_from",
                    "recovery_target_time")
PG_SETTINGS = ("max_connections", "work_mem")


def service_id(project: str, name: str) -> str:
    return f"{project}/{name}"


def integration_state_id(project: str, integration_id: str) -> str:
    return f"{project}/{integration_id}"


def split_id(value: str, what: str) -> tuple[str, str]:
    """``PROJECT/NAME`` -> (PROJECT, NAME); raises ValueError with the expected format."""
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"Invalid import id {value!r}: expected PROJECT/{what}")
    return parts[0], parts[1]


def _given(value: Any) -> bool:
    return value is not None and value is not Unknown


def components_state(components: list[dict]) -> list[dict[str, str]]:
    out = []
    for c in components or []:
        host, port = c.get("host"), c.get("port")
        out.append({
            "component": str(c.get("component", "")),
            "host": str(host or ""),
            "port": "" if port is None else str(port),
            "connection_uri": f"{host}:{port}" if host and port is not None else "",
            "route": str(c.get("route", "")),
            "usage": str(c.get("usage", "")),
            "ssl": "true" if c.get("ssl", True) else "false",
        })
    return out


def user_config_blocks(user_config: dict, prior: list[dict] | None) -> list[dict]:
    """The ``pg_user_config`` block as the user manages it: only the settings present in the prior
    state (that is, in the configuration) are reported, with the server's values. A configuration
    without the block reads as no block, whatever defaults the server applied (e.g. pg_version)."""
    if not prior:
        return []
    block = prior[0]
    out: dict[str, Any] = {}
    for key in USER_CONFIG_KEYS:
        out[key] = user_config.get(key) if block.get(key) is not None else None
    if out["pg_version"] is not None:
        out["pg_version"] = str(out["pg_version"])
    pg_prior = block.get("pg") or []
    if pg_prior:
        server_pg = user_config.get("pg") or {}
        out["pg"] = [{k: (server_pg.get(k) if pg_prior[0].get(k) is not None else None) for k in PG_SETTINGS}]
    else:
        out["pg"] = []
    return [out]


def user_config_body(blocks: list[dict] | None) -> dict:
    """The API ``user_config`` for a ``pg_user_config`` block (unset settings are left out)."""
    if not blocks:
        return {}
    block = blocks[0]
    body: dict[str, Any] = {}
    for key in USER_CONFIG_KEYS:
        if _given(block.get(key)):
            body[key] = block[key]
    pg = (block.get("pg") or [None])[0]
    if pg:
        settings = {k: int(pg[k]) for k in PG_SETTINGS if _given(pg.get(k))}
        if settings:
            body["pg"] = settings
    return body


def service_state(svc: dict, prior: dict | None = None) -> dict:
    """Terraform state of an aiven_pg / aiven_postgresql from the API's service object."""
    prior = prior or {}
    params = svc.get("service_uri_params") or {}
    users = svc.get("users") or []
    admin = next((u for u in users if u.get("type") == "primary"), users[0] if users else {})
    port = params.get("port")
    maintenance = svc.get("maintenance") or {}
    return {
        "id": service_id(svc["project"], svc["service_name"]),
        "project": svc["project"],
        "service_name": svc["service_name"],
        "plan": svc["plan"],
        "cloud_name": svc["cloud_name"],
        "service_type": svc.get("service_type", "pg"),
        "termination_protection": bool(svc.get("termination_protection", False)),
        "maintenance_window_dow": maintenance.get("dow"),
        "maintenance_window_time": maintenance.get("time"),
        "state": svc.get("state"),
        "disaster_recovery_role": svc.get("disaster_recovery_role"),
        "service_uri": svc.get("service_uri"),
        "service_host": params.get("host"),
        "service_port": int(port) if port not in (None, "") else None,
        "service_username": params.get("user") or admin.get("username"),
        "service_password": params.get("password") or admin.get("password"),
        "components": components_state(svc.get("components") or []),
        "pg_user_config": user_config_blocks(svc.get("user_config") or {}, prior.get("pg_user_config")),
        # create-only: what the configuration asked for at creation, kept as it was
        "service_integrations": list(prior.get("service_integrations") or []),
    }


def data_source_state(svc: dict) -> dict:
    st = service_state(svc)
    st.pop("pg_user_config")
    st.pop("service_integrations")
    return st


def create_body(planned: dict) -> dict:
    body: dict[str, Any] = {
        "service_name": planned["service_name"],
        "service_type": "pg",
        "plan": planned["plan"],
        "user_config": user_config_body(planned.get("pg_user_config")),
    }
    if _given(planned.get("cloud_name")) and planned["cloud_name"] != "":
        body["cloud"] = planned["cloud_name"]
    if _given(planned.get("termination_protection")):
        body["termination_protection"] = bool(planned["termination_protection"])
    maint = {k: planned[f"maintenance_window_{k}"] for k in ("dow", "time")
             if _given(planned.get(f"maintenance_window_{k}"))}
    if maint:
        body["maintenance"] = maint
    items = [
        {"integration_type": i["integration_type"], "source_service": i["source_service_name"], "user_config": {}}
        for i in planned.get("service_integrations") or []
    ]
    if items:
        body["service_integrations"] = items
    return body


def update_body(prior: dict, planned: dict) -> dict:
    """A PUT body with only what changed (never ``powered``: a pair member's power follows its role)."""
    body: dict[str, Any] = {}
    if planned.get("plan") != prior.get("plan"):
        body["plan"] = planned["plan"]
    if _given(planned.get("cloud_name")) and planned["cloud_name"] not in ("", prior.get("cloud_name")):
        body["cloud"] = planned["cloud_name"]
    if _given(planned.get("termination_protection")) and \
            planned["termination_protection"] != prior.get("termination_protection"):
        body["termination_protection"] = bool(planned["termination_protection"])
    maint = {k: planned[f"maintenance_window_{k}"] for k in ("dow", "time")
             if _given(planned.get(f"maintenance_window_{k}"))
             and planned[f"maintenance_window_{k}"] != prior.get(f"maintenance_window_{k}")}
    if maint:
        body["maintenance"] = maint
    uc_new = user_config_body(planned.get("pg_user_config"))
    if uc_new != user_config_body(prior.get("pg_user_config")) and uc_new:
        body["user_config"] = uc_new
    return body


def config_changed(prior: dict, proposed: dict, keys: tuple[str, ...]) -> bool:
    return any(prior.get(k) != proposed.get(k) for k in keys if proposed.get(k) is not Unknown)


# --- the disaster_recovery integration --------------------------------------------------------

# pgcrdr's attributes of a disaster_recovery integration -> the pair's automatic_failover fields
AF_FIELDS = {"automatic_failover_enabled": "enabled", "automatic_failover_grace_seconds": "grace_seconds",
             "automatic_failover_max_data_loss_bytes": "max_data_loss_bytes"}


def integration_state(integ: dict, project: str) -> dict:
    """The state of an integration (pgcrdr's automatic failover attributes unknown: see
    ``integrations.with_automatic_failover``)."""
    return {
        **dict.fromkeys(AF_FIELDS),
        "id": integration_state_id(project, integ["service_integration_id"]),
        "integration_id": integ["service_integration_id"],
        "project": project,
        "integration_type": integ["integration_type"],
        "source_service_name": integ["source_service"],
        "destination_service_name": integ["dest_service"],
        "source_service_project": integ.get("source_project") or project,
        "destination_service_project": integ.get("dest_project") or project,
    }


@dataclass(frozen=True)
class DrMove:
    """What making ``source`` the active side of a pair with ``dest`` takes, given current roles."""

    kind: str  # pair | adopt | switch | failback
    why: str


def plan_dr_move(source: dict, dest: dict, source_peer: str | None) -> DrMove:
    """Decide from the two services (API objects) and the source's DR peer.

    | source's peer | source role | move                                                        |
    |---------------|-------------|-------------------------------------------------------------|
    | not dest      | -           | pair: dest becomes a passive copy of source (server checks) |
    | dest          | active      | adopt: roles are already in place                           |
    | dest          | failed      | failback: restore source (passive), then promote it         |
    | dest          | passive     | switch: switchover / switchback to source                   |
    """
    src, dst = source["service_name"], dest["service_name"]
    if source_peer != dst:
        return DrMove("pair", f"{dst} becomes the passive copy of {src}")
    role = source.get("disaster_recovery_role")
    if role == "active":
        return DrMove("adopt", f"{src} is already active and {dst} its passive copy")
    if role == "failed":
        return DrMove("failback", f"{src} is failed: restore it as passive, then promote it to active")
    return DrMove("switch", f"switch the writer from {dst} to {src}")


def roles_in_place(source: dict | None, dest: dict | None) -> bool:
    return (source is not None and dest is not None
            and source.get("state") == "RUNNING" and source.get("disaster_recovery_role") == "active"
            and dest.get("state") == "RUNNING" and dest.get("disaster_recovery_role") == "passive")


def find_dr_integration(integrations: list[dict], a: str, b: str) -> dict | None:
    """The disaster_recovery integration object between services ``a`` and ``b`` (either direction)."""
    for i in integrations:
        if i.get("integration_type") == "disaster_recovery" and {i.get("source_service"), i.get("dest_service")} \
                == {a, b}:
            return i
    return None
