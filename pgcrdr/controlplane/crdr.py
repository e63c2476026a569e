"""CRDR requests: pair two services, change roles. Validate, record intent, return at once.

Every request here is one store transaction: either the whole intent (records of both services,
the integration, the operation) is written, or nothing is. The operation runner
(``pgcrdr.controlplane.operations``) carries operations out.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from pgcrdr.agentapi.models import StandbySource
from pgcrdr.controlplane.errors import Refused, clip, clip_repr, not_found_service
from pgcrdr.controlplane.records import (
    AutomaticFailover,
    IntegrationRecord,
    OperationKind,
    OperationRecord,
    ServiceRecord,
    StepRecord,
)
from pgcrdr.controlplane.services import now_rfc3339
from pgcrdr.controlplane.store import Store, Tx
from pgcrdr.controlplane.transitions import NoChange, RoleChange, plan_role_change

# The steps of each operation, in order. Each is idempotent (see operations.py).
STEPS: dict[str, list[str]] = {
    "setup": ["rebuild_passive", "wait_passive_in_sync"],
    # CHECKPOINT before holding writes: the writer's shutdown checkpoint then has little left to
    # flush, and the checkpoint itself is not part of the write pause.
    "switchover": ["precheck", "checkpoint", "pause", "demote", "confirm_lsn", "promote", "repoint", "resume",
                   "records", "wait_passive_in_sync"],
    "failover": ["record_lsn", "fence", "promote", "repoint", "records"],
    # restore: the failed side is rebuilt from the cheapest correct source (pg_rewind of its old
    # data, its own region's backups, or a full copy) before it is started as a standby.
    "failback_restore": ["preserve", "restore", "rebuild_passive", "wait_passive_in_sync"],
}
STEPS["switchback"] = STEPS["switchover"]
# Where a failback restore may rebuild the failed primary from, cheapest first; "auto" tries each.
FAILBACK_SOURCES = ("auto", "rewind", "restore", "basebackup")
STEPS["failback_promote"] = STEPS["switchover"]
# A pair found with no writer while no operation ran (the reconciler starts it): both sides
# confirmed not writable, the most advanced is promoted again.
STEPS["repair"] = ["settle", "promote", "repoint", "records"]


def slot_for(svc: ServiceRecord) -> str:
    """Physical slot the writer keeps for ``svc`` when ``svc`` is the passive side."""
    return "crdr_" + svc.cluster.replace("-", "_")


def standby_source_for(store: Store, svc: ServiceRecord) -> StandbySource | None:
    """Where ``svc`` replicates from when it is passive (or fenced): its active peer's regional
    writer endpoint, through the slot kept for ``svc``. None when ``svc`` should be a writer."""
    if not svc.standby_of:
        return None
    active = store.get_service(svc.project, svc.standby_of)
    if active is None or active.status is None:
        raise LookupError(f"{svc.standby_of} has no known endpoint yet")
    return StandbySource(host=active.status.primary.host, port=active.status.primary.port,
                         primary_slot_name=slot_for(svc))


def new_operation(project: str, pair: str, kind: OperationKind, service: str, role: str, source: str, target: str
                  ) -> OperationRecord:
    return OperationRecord(
        operation_id=uuid.uuid4().hex[:12], project=project, pair=pair, kind=kind, service=service,
        requested_role=role, source=source, target=target, create_time=now_rfc3339(),
        steps=[StepRecord(name=n) for n in STEPS[kind]],
    )


def _pair_name(a: ServiceRecord, b: ServiceRecord) -> str:
    return a.name if a.dr_kind == "primary" else b.name


def _bump(svc: ServiceRecord, **changes: object) -> ServiceRecord:
    return svc.model_copy(update={**changes, "generation": svc.generation + 1, "update_time": now_rfc3339()})


def _as_recovery_of(rec: ServiceRecord, primary: ServiceRecord) -> ServiceRecord:
    """``rec`` made a passive copy of ``primary``: same credentials, replicating through a slot."""
    return rec.model_copy(update={
        "dr_role": "passive", "dr_kind": "recovery", "dr_peer": primary.name, "standby_of": primary.name,
        "users": [u.model_copy() for u in primary.users],
        "databases": list(primary.databases),
        "superuser_password": primary.superuser_password,
        "replication_password": primary.replication_password,
        "rewind_password": primary.rewind_password,
        "permanent_slots": [slot_for(primary)],
        "state": "REBUILDING", "ever_ready": False,
    })


def _as_primary_of(primary: ServiceRecord, rec: ServiceRecord) -> ServiceRecord:
    return _bump(primary, dr_role="active", dr_kind="primary", dr_peer=rec.name, standby_of=None,
                 permanent_slots=[slot_for(rec)])


def _integration(project: str, source: str, dest: str) -> IntegrationRecord:
    return IntegrationRecord(integration_id=str(uuid.uuid4()), project=project, source=source, dest=dest,
                             create_time=now_rfc3339())


def attach_recovery(store: Store, rec: ServiceRecord, primary_name: str) -> ServiceRecord:
    """Create ``rec`` as the disaster-recovery copy of ``primary_name`` (avn --disaster-recovery-copy-for)."""
    def attach(tx: Tx) -> ServiceRecord:
        primary = tx.service(rec.project, primary_name)
        if primary is None or primary.deleting:
            raise not_found_service(primary_name)
        if primary.dr_peer is not None:
            raise Refused(409, f"Service {primary_name} already has a disaster recovery peer ({primary.dr_peer})")
        if tx.service(rec.project, rec.name) is not None:
            raise Refused(409, f"Service {rec.name} already exists")
        # The recovery service answers on its primary's Service URI: one URI for the pair.
        copy = _as_recovery_of(rec, primary).model_copy(update={
            "endpoint_direct_port": primary.endpoint_direct_port,
            "endpoint_pooled_port": primary.endpoint_pooled_port,
        })
        tx.put_service(copy)
        tx.put_service(_as_primary_of(primary, copy))
        tx.put_integration(_integration(copy.project, primary.name, copy.name))
        op = new_operation(copy.project, primary.name, "setup", copy.name, "passive", primary.name, primary.name)
        step = op.step("rebuild_passive")  # a new service is built as a copy from the start
        step.state, step.started, step.finished, step.duration_s = "done", op.create_time, op.create_time, 0.0
        step.detail = f"{copy.name} is created as a standby of {primary_name}"
        tx.put_operation(op)
        return copy

    return store.transaction(attach)


def create_integration(store: Store, project: str, body: dict) -> tuple[IntegrationRecord, OperationRecord | None]:
    """POST /integration of type disaster_recovery: pair two services, or (reversed) switch roles."""
    itype = body.get("integration_type")
    if itype != "disaster_recovery":
        raise Refused(400, f"Integration type {clip_repr(itype)} is not supported; pgcrdr supports disaster_recovery")
    src_name, dst_name = body.get("source_service"), body.get("dest_service")
    if not isinstance(src_name, str) or not isinstance(dst_name, str):
        raise Refused(400, "source_service and dest_service are required")
    def pair_or_switch(tx: Tx) -> tuple[IntegrationRecord, OperationRecord | None]:
        src, dst = tx.service(project, src_name), tx.service(project, dst_name)
        # Services that do not exist are named first (404): whatever else the body says is moot.
        for name, s in ((src_name, src), (dst_name, dst)):
            if s is None or s.deleting:
                raise not_found_service(name)
        if src_name == dst_name:
            raise Refused(400, "source_service and dest_service must be two different services")
        for key in ("source_project", "dest_project"):
            if body.get(key) not in (None, project):
                raise Refused(400, f"{key} must be {project}: both services of a pair live in one project")
        assert src is not None and dst is not None
        existing = [i for i in tx.integrations(project) if {i.source, i.dest} == {src_name, dst_name}]
        if src.dr_peer == dst_name and dst.dr_peer == src_name:
            # Already a pair: same direction is a duplicate; the reverse direction is a role change.
            if src.dr_role == "active":
                if existing:
                    raise Refused(409, f"Integration disaster_recovery {src_name} -> {dst_name} already exists")
                integ = _integration(project, src_name, dst_name)
                tx.put_integration(integ)
                return integ, None
            change = plan_role_change(src, dst, "active", tx.running_operation(project, _pair_name(src, dst)),
                                      last_kind=_last_kind(tx, project, _pair_name(src, dst)))
            assert isinstance(change, RoleChange)
            op = _start_role_change(tx, src, dst, "active", change)
            for old in existing:
                tx.delete_integration(project, old.integration_id)
            integ = _integration(project, src_name, dst_name)
            tx.put_integration(integ)
            return integ, op
        for s in (src, dst):
            if s.dr_peer is not None:
                raise Refused(409, f"Service {s.name} already has a disaster recovery peer ({s.dr_peer})")
        if src.cloud == dst.cloud:
            raise Refused(400, f"{src_name} and {dst_name} are both in {src.cloud}; a DR pair spans two clouds")
        if not src.powered or not dst.powered:
            raise Refused(409, "Both services must be powered on to pair them")
        # dst is rebuilt as a copy of src; its previous data is kept aside by the runner first.
        rec = _bump(_as_recovery_of(dst, src), endpoint_direct_port=src.endpoint_direct_port,
                    endpoint_pooled_port=src.endpoint_pooled_port)
        tx.put_service(rec)
        tx.put_service(_as_primary_of(src, rec))
        integ = _integration(project, src_name, dst_name)
        tx.put_integration(integ)
        op = new_operation(project, src_name, "setup", dst_name, "passive", src_name, src_name)
        op.data["recreate"] = True  # the existing cluster must be replaced by a copy
        tx.put_operation(op)
        return integ, op

    return store.transaction(pair_or_switch)


def delete_integration(store: Store, project: str, integration_id: str) -> None:
    """Remove the integration object. Roles do not change (the pair keeps replicating)."""
    def delete(tx: Tx) -> None:
        if not any(i.integration_id == integration_id for i in tx.integrations(project)):
            raise Refused(404, f"Service integration {clip(integration_id)} does not exist")
        tx.delete_integration(project, integration_id)

    store.transaction(delete)


def _last_kind(tx: Tx, project: str, pair: str) -> str | None:
    ops = [o for o in tx.operations(project, pair) if o.state == "done" and o.kind not in ("setup", "repair")]
    return ops[-1].kind if ops else None


def _start_role_change(tx: Tx, svc: ServiceRecord, peer: ServiceRecord, role: str,
                       change: RoleChange) -> OperationRecord:
    op = new_operation(svc.project, _pair_name(svc, peer), change.kind, svc.name, role, change.source, change.target)
    # In-progress values, as the docs show them during the transition.
    if change.kind == "failover":
        tx.put_service(svc.model_copy(update={"state": "REBALANCING", "update_time": now_rfc3339()}))
        tx.put_service(peer.model_copy(update={"state": "REBALANCING", "update_time": now_rfc3339()}))
    elif change.kind == "failback_restore":
        tx.put_service(svc.model_copy(update={"dr_role": "passive", "state": "REBUILDING", "ever_ready": False,
                                              "update_time": now_rfc3339()}))
    else:
        for s in (svc, peer):
            tx.put_service(s.model_copy(update={"state": "REBALANCING", "update_time": now_rfc3339()}))
    tx.put_operation(op)
    return op


def request_role(store: Store, project: str, name: str, role: str, failback_source: str | None = None,
                 automatic: str | None = None) -> tuple[OperationRecord | None, str]:
    """PUT service {"disaster_recovery_role": role} (or pgcrdr itself, ``automatic`` saying why).
    Returns the operation started (or None) and why."""
    return update_and_request_role(store, project, name, None, role, failback_source, automatic)


def superseded_by(running: OperationRecord, role: str) -> bool:
    """A repair that has not chosen a writer yet (it waits for a side that does not answer)
    gives way to a failover: it must never stand between a user and the recovery region."""
    if running.kind != "repair" or role != "failed":
        return False
    try:
        return running.step("settle").state != "done"
    except KeyError:
        return False


def update_and_request_role(
    store: Store, project: str, name: str, change: Callable[[ServiceRecord], ServiceRecord | None] | None,
    role: str, failback_source: str | None = None, automatic: str | None = None,
) -> tuple[OperationRecord | None, str]:
    """PUT service with other fields and ``disaster_recovery_role``: ``change`` (the other fields,
    see ``ServiceManager.service_change``) and the role change in one transaction, so a refusal of
    either writes nothing. The role is planned on the record as ``change`` leaves it.
    ``automatic``: no one asked; why pgcrdr did (kept in the operation's details)."""
    def request(tx: Tx) -> tuple[OperationRecord | None, str]:
        svc = tx.service(project, name)
        if svc is None or svc.deleting:
            raise not_found_service(name)
        if change is not None:
            changed = change(svc)
            if changed is not None:
                tx.put_service(changed)
                svc = changed
        pair = svc.name if svc.dr_kind == "primary" else (svc.dr_peer or svc.name)
        peer = tx.service(project, svc.dr_peer) if svc.dr_peer else None
        running = tx.running_operation(project, pair)
        if running is not None and superseded_by(running, role):
            running.state, running.finish_time = "failed", now_rfc3339()
            running.message = (f"superseded by a request to make {name} {role}: the repair had not changed "
                               "anything yet (a side could not be asked)")
            tx.put_operation(running)
            running = None
        decision = plan_role_change(svc, peer, role, running, last_kind=_last_kind(tx, project, pair))
        if isinstance(decision, NoChange):
            return None, decision.why
        assert peer is not None
        if failback_source not in (None, "auto") and decision.kind != "failback_restore":
            raise Refused(409, f"failback_source applies to restoring a failed primary; this request is a "
                               f"{decision.kind.replace('_', ' ')}")
        op = _start_role_change(tx, svc, peer, role, decision)
        if decision.kind == "failback_restore" and failback_source not in (None, "auto"):
            op.data["sources"] = [failback_source]
            tx.put_operation(op)
        if automatic is not None:
            op.data["automatic"] = automatic
            op.message = automatic
            tx.put_operation(op)
        return op, decision.why

    return store.transaction(request)


def parse_automatic_failover(value: object) -> AutomaticFailover:
    """The body's ``automatic_failover`` (pure), refused with a message naming the field."""
    if not isinstance(value, dict):
        raise Refused(400, "automatic_failover must be an object: {\"enabled\": true, \"grace_seconds\": 30, "
                           "\"max_data_loss_bytes\": 16777216}")
    unknown = sorted(set(value) - set(AutomaticFailover.model_fields))
    if unknown:
        raise Refused(400, f"automatic_failover has no field {clip(unknown[0])}; its fields: enabled, grace_seconds, "
                           "max_data_loss_bytes")
    if not isinstance(value.get("enabled"), bool):
        raise Refused(400, "automatic_failover.enabled must be true or false")
    grace = value.get("grace_seconds", AutomaticFailover().grace_seconds)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 1 <= grace <= 86400:
        raise Refused(400, "automatic_failover.grace_seconds must be a number of seconds from 1 to 86400")
    bound = value.get("max_data_loss_bytes", AutomaticFailover().max_data_loss_bytes)
    if isinstance(bound, float) and bound.is_integer():
        bound = int(bound)  # JSON's 230.0 is the integer 230 (as JSON Schema says)
    if isinstance(bound, bool) or not isinstance(bound, int) or not 0 <= bound <= 2 ** 40:
        raise Refused(400, "automatic_failover.max_data_loss_bytes must be a whole number of bytes from 0 to 2^40")
    return AutomaticFailover(enabled=value["enabled"], grace_seconds=float(grace), max_data_loss_bytes=bound)


def set_automatic_failover(store: Store, project: str, name: str, cfg: AutomaticFailover,
                           writer_leases: bool) -> None:
    """Keep ``cfg`` on the pair of ``name`` (on its primary). Enabling it needs writer leases:
    without them a cut-off writer keeps taking writes, and promoting the recovery by itself would
    make two writers."""
    if cfg.enabled and not writer_leases:
        raise Refused(409, "automatic failover needs writer leases, so that a cut-off writer stops itself before "
                           "the recovery is promoted: run pgcrdr with a global etcd (a topology with [control] "
                           "store); here, fail over by request (disaster_recovery_role failed)")

    def change(tx: Tx) -> None:
        svc = tx.service(project, name)
        if svc is None or svc.deleting:
            raise not_found_service(name)
        if not svc.dr_peer:
            raise Refused(409, f"{name} is not part of a disaster recovery pair; create its recovery copy first "
                               "(--disaster-recovery-copy-for)")
        primary = svc if svc.dr_kind == "primary" else tx.service(project, svc.dr_peer)
        if primary is None:
            raise not_found_service(svc.dr_peer)
        tx.put_service(primary.model_copy(update={"automatic_failover": cfg, "update_time": now_rfc3339()}))

    store.transaction(change)
