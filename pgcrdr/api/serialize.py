"""Service and project objects shaped exactly as the real ``avn`` and Terraform read them.

See ../shared/docs/api-contract.md section 3.3: integers are ints, ``service_uri_params`` and
``pg_params`` values are strings, the pg/dynamic/primary component comes first, ``maintenance``
and ``connection_info`` are never null.
"""

from __future__ import annotations

from urllib.parse import quote

from pgcrdr.agentapi.models import ClusterStatus, NodeStatus
from pgcrdr.config import Settings
from pgcrdr.controlplane.catalog import PLANS
from pgcrdr.controlplane.lag import pair_lag
from pgcrdr.controlplane.records import (
    DrillRecord,
    AutomaticFailover,
    IntegrationRecord,
    OperationRecord,
    ProjectRecord,
    ServiceRecord,
)
from pgcrdr.controlplane.store import Store

DEFAULT_DB = "defaultdb"


def _uri(user: str, password: str, host: str, port: int, db: str = DEFAULT_DB) -> str:
    return f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}?sslmode=require"


def multi_host_uri(user: str, password: str, hosts: tuple[str, ...], port: int, db: str = DEFAULT_DB) -> str:
    """One URI over the same port of several hosts, for libpq and psycopg: they try each host in
    turn and keep the first that takes writes (``target_session_attrs=read-write``)."""
    where = ",".join(f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts)
    return (f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{where}/{db}"
            "?sslmode=require&target_session_attrs=read-write")


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
        # pgcrdr extension: a standby's in-region replication to the writer (sync, quorum,
        # potential, async; null for the writer and in a passive copy)
        "sync_state": node.sync_state,
    }


def _endpoints(status: ClusterStatus | None, host: str) -> tuple[str, int, int]:
    if status is None:
        return host, 0, 0
    return status.primary.host, status.primary.port, status.replica.port


def service_json(svc: ServiceRecord, project: ProjectRecord, settings: Settings,
                 integrations: list[IntegrationRecord] | None = None, endpoints_enabled: bool = False) -> dict:
    plan = PLANS[svc.plan]
    admin = svc.primary_user
    host, port, replica_port = _endpoints(svc.status, settings.host)
    pooled_port = None
    if endpoints_enabled and svc.endpoint_direct_port:
        # The Service URI is served by the control plane, outside every region: it never changes.
        host, port, pooled_port = settings.host, svc.endpoint_direct_port, svc.endpoint_pooled_port
    uri = _uri(admin.username, admin.password, host, port)
    replica_uri = _uri(admin.username, admin.password, settings.host, replica_port)
    region = settings.region(svc.cloud)
    components = [
        {"component": "pg", "host": host, "port": port, "route": "dynamic", "usage": "primary", "ssl": True},
    ]
    if plan.node_count > 1 or svc.dr_role is not None:
        # This region's standby URI (read-only): the service's own standbys, or its standby leader.
        components.append(
            {"component": "pg", "host": settings.host, "port": replica_port, "route": "dynamic",
             "usage": "replica" if svc.dr_role is None else "disaster_recovery", "ssl": True}
        )
    if pooled_port:
        components.append({"component": "pgbouncer", "host": host, "port": pooled_port, "route": "dynamic",
                           "usage": "primary", "ssl": True})
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
        "disaster_recovery_role": svc.dr_role,
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
            "pg_standby": [replica_uri] if plan.node_count > 1 or svc.dr_role is not None else [],
            "pg_syncing": [],
            **({"pgbouncer": [_uri(admin.username, admin.password, host, pooled_port)]} if pooled_port else {}),
            # pgcrdr extension: several control-plane replicas each serve the Service URI
            **({"pg_multihost": [multi_host_uri(admin.username, admin.password, settings.control_addresses, port)]}
               if pooled_port and len(settings.control_addresses) > 1 else {}),
        },
        "components": components,
        "users": [{"username": u.username, "password": u.password, "type": u.type} for u in svc.users],
        "databases": list(svc.databases),
        "connection_pools": [],
        "backups": backups_json(svc),
        "node_states": nodes,
        "maintenance": {
            "dow": svc.maintenance.get("dow", "sunday"),
            "time": svc.maintenance.get("time", "04:00:00"),
            "enabled": True,
            "updates": [],
        },
        "metadata": {"max_connections": int((svc.user_config.get("pg") or {}).get("max_connections", 100))},
        "service_integrations": [integration_json(i) for i in (integrations or [])],
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


def integration_json(i: IntegrationRecord) -> dict:
    return {
        "service_integration_id": i.integration_id,
        "integration_type": i.integration_type,
        "source_project": i.project, "source_service": i.source, "source_service_type": "pg",
        "dest_project": i.project, "dest_service": i.dest, "dest_service_type": "pg",
        "source_endpoint_id": None, "dest_endpoint_id": None, "source_endpoint": None, "dest_endpoint": None,
        "active": True, "enabled": True, "description": "Disaster recovery",
        "integration_status": {"state": {"status": "running", "errors": [], "nodes": {}}, "status_user_desc": ""},
        "user_config": {},
        "create_time": i.create_time,
    }


def backups_json(svc: ServiceRecord) -> list[dict]:
    """The service's backups in its own region's repository, newest last (as Aiven lists them)."""
    st = svc.status.backup if svc.status else None
    if st is None:
        return []
    return [{"backup_name": b.label, "backup_time": b.stop_time, "data_size": b.size,
             "storage_location": f"{svc.cloud}:{st.repository}", "backup_type": b.type}
            for b in st.backups]


def backups_response(svc: ServiceRecord) -> dict:
    """GET .../backups: the list, the backup in progress and the WAL archive (ours, beyond Aiven's)."""
    st = svc.status.backup if svc.status else None
    out: dict = {"backups": backups_json(svc)}
    if st is None:
        return out
    if st.running is not None:
        out["backup_progress"] = {"type": st.running.type, "started": st.running.started,
                                  "bytes_total": st.running.size, "bytes_done": st.running.done}
    arch = st.archive
    out["wal_archive"] = {
        "region": svc.cloud, "repository": st.repository, "ok": st.ok, "message": st.message,
        "last_backup_error": st.last_error, "last_backup_error_time": st.last_error_time,
        **({"last_archived_wal": arch.last_archived_wal, "last_archived_time": arch.last_archived_time,
            "archived_count": arch.archived_count, "failed_count": arch.failed_count,
            "last_failed_wal": arch.last_failed_wal, "last_failed_time": arch.last_failed_time,
            "oldest_wal": arch.archive_min, "newest_wal": arch.archive_max} if arch else {}),
    }
    if st.backups:
        out["pitr"] = {"earliest_recovery_time": st.backups[0].stop_time,
                       "latest_recovery_time": (arch.last_archived_time if arch and arch.last_archived_time
                                                else st.backups[-1].stop_time)}
    return out


def operation_json(op: OperationRecord) -> dict:
    return {
        "operation_id": op.operation_id, "kind": op.kind, "service": op.service,
        "requested_role": op.requested_role, "from": op.source, "to": op.target, "state": op.state,
        "create_time": op.create_time, "finish_time": op.finish_time, "message": op.message,
        "write_pause_s": op.write_pause_s, "data_loss": op.data_loss,
        "steps": [s.model_dump() for s in op.steps],
        "details": {k: v for k, v in op.data.items() if not k.startswith("t_")},
    }


def dr_status_json(svc: ServiceRecord, store: Store) -> dict:
    """GET .../disaster-recovery: role, peer, replication lag, running operation, history."""
    pair = svc.name if svc.dr_kind != "recovery" else (svc.dr_peer or svc.name)
    ops = store.list_operations(svc.project, pair) if svc.dr_peer else []
    integ = next((i for i in store.list_integrations(svc.project) if svc.name in (i.source, i.dest)), None)
    passive = svc
    if svc.dr_peer and svc.dr_role != "passive":
        passive = store.get_service(svc.project, svc.dr_peer) or svc
    lsn = passive.status.lsn if passive.status and passive.dr_role == "passive" else None
    lag_bytes = None
    if lsn is not None and svc.dr_peer:
        # the active writer's position minus what the passive side replayed (across regions)
        other = store.get_service(svc.project, svc.dr_peer) if passive is svc else svc
        if other is not None:
            lag_bytes = pair_lag(passive, other, 0.0).lag_bytes
    running = next((o for o in ops if o.state == "running"), None)
    return {
        "service_name": svc.name,
        "disaster_recovery_role": svc.dr_role,
        "disaster_recovery_kind": svc.dr_kind,
        "peer_service": svc.dr_peer,
        "integration_id": integ.integration_id if integ else None,
        "state": svc.state,
        "replication": {
            "passive_service": passive.name if svc.dr_peer else None,
            "receive_lsn": lsn.receive_lsn if lsn else None,
            "replay_lsn": lsn.replay_lsn if lsn else None,
            "lag_bytes": lag_bytes,
            "lag_seconds": lsn.lag_seconds if lsn else None,
        },
        "operation": operation_json(running) if running else None,
        "history": [operation_json(o) for o in ops if o.state != "running"],
        "automatic_failover": _automatic_failover(svc, store),
        # drills rehearse the pair's moves (on forks, or in place): kept apart from its history
        "drills": [drill_json(d) for d in store.list_drills(svc.project, pair)] if svc.dr_peer else [],
    }


def drill_json(d: DrillRecord) -> dict:
    return {"drill_id": d.drill_id, "pair": d.pair, "kind": d.kind, "in_place": d.in_place, "state": d.state,
            "create_time": d.create_time, "report": d.report}


def _automatic_failover(svc: ServiceRecord, store: Store) -> dict | None:
    """The pair's automatic failover (kept on its primary); None outside a pair."""
    if not svc.dr_peer:
        return None
    primary = svc if svc.dr_kind == "primary" else store.get_service(svc.project, svc.dr_peer)
    cfg = primary.automatic_failover if primary is not None else None
    return (cfg or AutomaticFailover()).model_dump()
