"""Service and project objects shaped exactly as the real ``avn`` and Terraform read them.

See ../shared/docs/api-contract.md section 3.3: integers are ints, ``service_uri_params`` and
``pg_params`` values are strings, the pg/dynamic/primary component comes first, ``maintenance``
and ``connection_info`` are never null.
"""

from __future__ import annotations

from urllib.parse import quote

from pgcrdr.agent.models import ClusterStatus, NodeStatus
from pgcrdr.config import Settings
from pgcrdr.controlplane.catalog import PLANS
from pgcrdr.controlplane.records import ProjectRecord, ServiceRecord

DEFAULT_DB = "defaultdb"


def _uri(user: str, password: str, host: str, port: int, db: str = DEFAULT_DB) -> str:
    return f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}?sslmode=require"


def _params(user: str, password: str, host: str, port: int) -> dict[str, str]:
    return {
        "dbname": DEFAULT_DB,
        "host": host,
        "password": password,
        "port": str(port),
        "sslmode": "require",
        "user": user,
    }


_NODE_STATE = {"running": "running", "starting": "syncing_data", "stopped": "leaving", "failed": "unknown"}
_NODE_ROLE = {"primary": "master", "replica": "standby", "standby_leader": "standby", "unknown": "standby"}


def node_state_json(node: NodeStatus) -> dict:
    return {
        "name": node.name,
        "state": _NODE_STATE[node.state],
        "role": _NODE_ROLE[node.role],
        "availability_zone": "local",
        "progress_updates": [
            {
                "phase": p.phase,
                "min": p.min,
                "max": p.max,
                "current": p.current,
                "unit": p.unit,
                "completed": p.completed,
            }
            for p in node.progress
        ],
        "lag_bytes": node.lag_bytes,
    }


def _endpoints(status: ClusterStatus | None, host: str) -> tuple[str, int, int]:
    if status is None:
        return host, 0, 0
    return status.primary.host, status.primary.port, status.replica.port


def service_json(svc: ServiceRecord, project: ProjectRecord, settings: Settings) -> dict:
    plan = PLANS[svc.plan]
    admin = svc.primary_user
    host, port, replica_port = _endpoints(svc.status, settings.host)
    uri = _uri(admin.username, admin.password, host, port)
    replica_uri = _uri(admin.username, admin.password, host, replica_port)
    region = settings.region(svc.cloud)
    components = [
        {"component": "pg", "host": host, "port": port, "route": "dynamic", "usage": "primary", "ssl": True},
    ]
    if plan.node_count > 1:
        components.append(
            {"component": "pg", "host": host, "port": replica_port, "route": "dynamic", "usage": "replica",
             "ssl": True}
        )
    nodes = [node_state_json(n) for n in (svc.status.nodes if svc.status else [])]
    return {
        "service_name": svc.name,
        "service_type": svc.service_type,
        "service_type_description": "PostgreSQL - Object-Relational Database Management System",
        "project": svc.project,
        "plan": svc.plan,
        "cloud_name": svc.cloud,
        "cloud_description": region.description if region else svc.cloud,
        "state": svc.state,
        "disaster_recovery_role": None,
        "create_time": svc.create_time,
        "update_time": svc.update_time,
        "group_list": ["default"],
        "project_vpc_id": None,
        "termination_protection": svc.termination_protection,
        "disk_space_mb": plan.disk_space_mb,
        "node_count": plan.node_count,
        "node_cpu_count": plan.cpu,
        "node_memory_mb": float(plan.memory_mb),
        "user_config": svc.user_config,
        "service_uri": uri,
        "service_uri_params": _params(admin.username, admin.password, host, port),
        "connection_info": {
            "pg": [uri],
            "pg_params": [_params(admin.username, admin.password, host, port)],
            "pg_standby": [replica_uri] if plan.node_count > 1 else [],
            "pg_syncing": [],
        },
        "components": components,
        "users": [{"username": u.username, "password": u.password, "type": u.type} for u in svc.users],
        "databases": list(svc.databases),
        "connection_pools": [],
        "backups": [],
        "node_states": nodes,
        "maintenance": {
            "dow": svc.maintenance.get("dow", "sunday"),
            "time": svc.maintenance.get("time", "04:00:00"),
            "enabled": True,
            "updates": [],
        },
        "metadata": {"max_connections": int((svc.user_config.get("pg") or {}).get("max_connections", 100))},
        "service_integrations": [],
        "service_notifications": [],
        "tags": dict(svc.tags),
        "tech_emails": list(svc.tech_emails),
        "features": {},
        "status_message": svc.message,
    }


def project_json(p: ProjectRecord) -> dict:
    return {
        "project_name": p.name,
        "account_id": None,
        "default_cloud": p.default_cloud,
        "billing_currency": "USD",
        "billing_extra_text": None,
        "billing_address": "",
        "country_code": "",
        "vat_id": "",
        "card_info": None,
        "tech_emails": [],
        "tags": {},
        "estimated_balance": "0.00",
        "create_time": p.create_time,
    }
