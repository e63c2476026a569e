"""The CRDR role-change table: current roles + requested role -> operation, or a refusal.

Pure: it reads records, returns a value, and does no I/O. Read it top to bottom; the first row
that matches decides. Every refusal says why and what to do instead.

| requested | service             | peer               | decision                                   |
|-----------|---------------------|--------------------|--------------------------------------------|
| any       | no DR peer          |                    | refuse: create a recovery service first    |
| any       | an operation runs on the pair            | refuse 409                               |
| same role | -                   | -                  | nothing to do                              |
| failed    | recovery            |                    | refuse: only the primary can fail          |
| failed    | primary, active     | passive, in sync   | failover                                   |
| failed    | primary, passive    | active             | refuse: the recovery is the writer         |
| passive   | primary, failed     | active, reachable  | failback_restore                           |
| passive   | primary, active     | passive            | refuse: use switchover (recovery->active)  |
| passive   | recovery, active    | primary passive    | switchback (the primary takes over)        |
| active    | any, failed         |                    | refuse: restore it first (passive)         |
| active    | passive, REBUILDING |                    | refuse 409: wait until RUNNING             |
| active    | passive, not in sync|                    | refuse 409: replication is not streaming   |
| active    | recovery, passive   | primary active     | switchover                                 |
| active    | primary, passive    | recovery active    | failback_promote after a restore, else switchback |
"""

from __future__ import annotations

from dataclasses import dataclass

from pgcrdr.controlplane.errors import Refused, clip_repr
from pgcrdr.controlplane.records import OperationKind, OperationRecord, ServiceRecord

ROLES = ("active", "passive", "failed")


@dataclass(frozen=True)
class RoleChange:
    kind: OperationKind
    source: str  # writer before
    target: str  # writer after
    why: str


@dataclass(frozen=True)
class NoChange:
    why: str


def in_sync(svc: ServiceRecord) -> bool:
    """A passive service that has caught up and streams (its region reports it ready)."""
    return svc.state == "RUNNING" and svc.status is not None and svc.status.ready and svc.status.standby


def plan_role_change(
    svc: ServiceRecord,
    peer: ServiceRecord | None,
    requested: str,
    running: OperationRecord | None = None,
    last_kind: str | None = None,
) -> RoleChange | NoChange:
    """Decide what a ``disaster_recovery_role`` request means. Raises :class:`Refused`."""
    name = svc.name
    if requested not in ROLES:
        raise Refused(400, f"Invalid disaster_recovery_role {clip_repr(requested)}; use one of: {', '.join(ROLES)}")
    if peer is None or svc.dr_role is None:
        raise Refused(
            400,
            f"Service {name} has no disaster recovery peer; create a recovery service first "
            f"(avn service create NAME --disaster-recovery-copy-for {name} ...)",
        )
    busy = None
    if running is not None:
        busy = Refused(
            409,
            f"A {running.kind} operation is already running on the pair {running.pair}; "
            "wait for it to finish (see GET .../disaster-recovery) and retry",
        )
    try:
        change = _plan(svc, peer, requested, last_kind)
    except Refused as exc:
        # A request that is wrong anyway (400) says why; one that only conflicts with the state
        # an operation is moving (409) is told about that operation.
        if busy is not None and exc.status == 409:
            raise busy from None
        raise
    if busy is not None and running is not None:
        if running.service == svc.name and running.requested_role == requested:
            return NoChange(f"{running.kind} to make {svc.name} {requested} is already in progress")
        if running.kind == "setup" and isinstance(change, NoChange):
            return change  # building the copy changes no role: asking for the current one is harmless
        raise busy  # the roles are moving: any other request conflicts with the running operation
    return change


def _plan(svc: ServiceRecord, peer: ServiceRecord, requested: str, last_kind: str | None) -> RoleChange | NoChange:
    name = svc.name
    if requested == svc.dr_role:
        return NoChange(f"{name} is already {requested}")

    if requested == "failed":
        if svc.dr_kind != "primary":
            raise Refused(
                400,
                f"Only the primary service can be marked failed; {name} is the recovery service. "
                f"To move writes back to {peer.name}, set {peer.name} to active",
            )
        if svc.dr_role == "passive":
            raise Refused(
                409,
                f"{name} is passive: {peer.name} is already the writer, there is nothing to fail over; "
                f"to move writes back to {name}, set {name} to active",
            )
        if peer.state == "REBUILDING" or (peer.status is not None and not peer.status.standby):
            raise Refused(
                409,
                f"The recovery service {peer.name} is still being built and holds no consistent copy yet; "
                "wait until it is RUNNING before failing over",
            )
        return RoleChange("failover", source=name, target=peer.name, why=f"{name} failed: promote {peer.name}")

    if requested == "passive":
        if svc.dr_role == "failed":
            return RoleChange(
                "failback_restore", source=peer.name, target=peer.name,
                why=f"recreate {name} as a standby of {peer.name}",
            )
        if svc.dr_kind == "primary":
            raise Refused(
                400,
                f"{name} is the active service. To make {peer.name} the writer, set {peer.name} to active "
                "(switchover); to recreate a failed primary, it must be failed first",
            )
        if peer.dr_role == "failed":
            raise Refused(
                409,
                f"The primary {peer.name} is failed; restore it first (set {peer.name} to passive), "
                f"then promote it (set {peer.name} to active)",
            )
        return _planned_switch(to=peer, frm=svc, last_kind=last_kind)

    # requested == "active"
    return _planned_switch(to=svc, frm=peer, last_kind=last_kind)


def _planned_switch(to: ServiceRecord, frm: ServiceRecord, last_kind: str | None) -> RoleChange:
    """Move the writer from ``frm`` (active) to ``to`` (passive) with the zero-loss sequence."""
    name, peer = to.name, frm
    svc = to
    if svc.dr_role == "failed":
        raise Refused(
            409,
            f"{name} is failed; restore it first by setting its role to passive, wait until it is RUNNING, "
            "then set it to active",
        )
    if svc.state == "REBUILDING":
        raise Refused(
            409,
            f"{name} is still rebuilding; wait until it is RUNNING (avn service wait {name}) "
            "before promoting it",
        )
    if not in_sync(svc):
        raise Refused(
            409,
            f"{name} is not streaming from {peer.name} right now, so a switch could lose writes; "
            "retry once its replication has caught up",
        )
    if peer.dr_role != "active":
        raise Refused(409, f"{peer.name} is {peer.dr_role}, not active: there is no writer to switch from; "
                           f"wait for the operation on the pair to end, or restore {peer.name} first "
                           "(set it to passive)")
    if svc.dr_kind == "recovery":
        return RoleChange("switchover", source=peer.name, target=name, why=f"planned switch to {name}")
    kind: OperationKind = "failback_promote" if last_kind == "failback_restore" else "switchback"
    return RoleChange(kind, source=peer.name, target=name, why=f"planned switch back to {name}")
