"""What the console shows for a CRDR pair, decided from the API's own JSON (pure, no I/O).

The console offers only the actions that make sense in the current state of the pair; the
server still validates every request (pgcrdr.controlplane.transitions) and the console shows
its message when it refuses one (the state may have moved since the page last looked).

Inputs are the API shapes: service objects as ``GET /v1/project/P/service/S`` returns them and
operations as ``GET .../disaster-recovery`` returns them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Console labels, word for word as the seed and Aiven's console spell them.
LABELS = {
    "create_recovery": "Create recovery service",
    "failback": "Failback to primary region",
    "switchover": "Switchover to recovery service",
    "switchback": "Switchback to primary service",
    "recovery_cycle": "Service recovery cycle",
    "failover": "Initiate failover",
    "restore": "Restore primary service",
    "promote": "Promote primary to active",
    "done": "Done",
}

KIND_LABELS = {
    "setup": "Create recovery service",
    "failover": "Failover to recovery service",
    "failback_restore": "Restore primary service",
    "failback_promote": "Promote primary to active",
    "switchover": "Switchover to recovery service",
    "switchback": "Switchback to primary service",
    "repair": "Repair: no node took writes",
}


@dataclass(frozen=True)
class Offer:
    offered: bool
    why: str  # why it is offered, or why not (shown as a hint)


def role_label(svc: dict | None) -> str | None:
    """The combination of role and state, as the console shows it: Active / Passive / Failed /
    Rebuilding (crdr.md). ``None`` for a service outside any pair."""
    if svc is None or svc.get("disaster_recovery_role") is None:
        return None
    role = svc["disaster_recovery_role"]
    if role == "failed":
        return "Failed"
    if svc.get("state") == "REBUILDING":
        return "Rebuilding"
    return role.capitalize()


def _running(svc: dict | None) -> bool:
    return svc is not None and svc.get("state") == "RUNNING"


def offered_actions(primary: dict, recovery: dict | None, running: dict | None) -> dict[str, Offer]:
    """Which actions the console offers for the pair (or lone service) in its current state.

    ``primary`` is the pair's primary service (or the lone service), ``recovery`` its recovery
    service, ``running`` the operation in progress on the pair (or None)."""
    p_role = primary.get("disaster_recovery_role")
    r_role = recovery.get("disaster_recovery_role") if recovery else None
    offers: dict[str, Offer] = {}
    name = primary["service_name"]

    if recovery is None:
        if p_role is not None:
            create = Offer(False, f"{name} is already part of a disaster recovery pair")
        elif not _running(primary):
            create = Offer(False, f"{name} is {primary.get('state')}; wait until it is RUNNING")
        else:
            create = Offer(True, f"create a passive copy of {name} in another region")
        offers["create_recovery"] = create
        for key in ("failback", "switchover", "switchback", "recovery_cycle", "failover", "restore", "promote"):
            offers[key] = Offer(False, "create a recovery service first")
        return offers

    rec = recovery["service_name"]
    offers["create_recovery"] = Offer(False, f"{name} already has a recovery service ({rec})")
    offers["recovery_cycle"] = Offer(True, "failover and failback of the pair")
    busy = None
    if running is not None:
        busy = f"a {KIND_LABELS.get(running['kind'], running['kind']).lower()} operation is in progress"

    def offer(ok: bool, yes: str, no: str) -> Offer:
        if busy is not None:
            return Offer(False, busy)
        return Offer(ok, yes if ok else no)

    normal = p_role == "active" and r_role == "passive"
    offers["failover"] = offer(
        normal and _running(recovery),
        f"make {rec} active; {name} is marked failed",
        f"{rec} must be passive and RUNNING" if normal else f"{name} is not the active service",
    )
    offers["switchover"] = offer(
        normal and _running(recovery) and _running(primary),
        f"planned switch of the writer to {rec}",
        f"both services must be RUNNING, {name} active and {rec} passive",
    )
    swapped = p_role == "passive" and r_role == "active"
    offers["switchback"] = offer(
        swapped and _running(primary) and _running(recovery),
        f"planned switch of the writer back to {name}",
        f"{name} must be passive and RUNNING, {rec} active",
    )
    offers["restore"] = offer(
        p_role == "failed" and r_role == "active" and _running(recovery),
        f"recreate {name} as a passive copy of {rec}",
        f"only a failed primary is restored, while {rec} is active and RUNNING",
    )
    offers["promote"] = offer(
        swapped and _running(primary) and _running(recovery),
        f"make {name} active again, {rec} passive",
        f"{name} must be passive and RUNNING (restored) first",
    )
    # The failback wizard is offered while there is something to fail back: a failed primary, or
    # a failback under way (so that it can be followed and finished).
    in_failback = running is not None and running["kind"] in ("failback_restore", "failback_promote")
    can_failback = (p_role == "failed" and _running(recovery)) or offers["promote"].offered
    if in_failback:
        offers["failback"] = Offer(True, "follow the failback in progress")
    else:
        offers["failback"] = offer(
            can_failback,
            f"bring the writer back to {name}'s region",
            f"{name} is active: there is nothing to fail back",
        )
    return offers


def cycle_phase(primary: dict, recovery: dict, running: dict | None, last_kind: str | None) -> str:
    """Where the pair is in the service recovery cycle (failover, then failback restore + promote)."""
    p_role, r_role = primary.get("disaster_recovery_role"), recovery.get("disaster_recovery_role")
    if running is not None:
        kind = running["kind"]
        if kind == "failover":
            return "failing_over"
        if kind == "failback_restore":
            return "restoring"
        if kind in ("failback_promote", "switchback") and running.get("to") == primary["service_name"]:
            return "promoting"
        return "busy"
    if p_role == "failed":
        return "failed"
    if p_role == "passive" and r_role == "active":
        return "restored" if last_kind == "failback_restore" else "swapped"
    if p_role == "active" and last_kind == "failback_promote":
        return "complete"
    return "normal"


# For each phase: the status of each wizard step (done / running / current / pending).
_STEP_STATUS = {
    "normal": ("current", "pending", "pending", "pending"),
    "busy": ("pending", "pending", "pending", "pending"),
    "failing_over": ("running", "pending", "pending", "pending"),
    "failed": ("done", "current", "pending", "pending"),
    "restoring": ("done", "running", "pending", "pending"),
    "restored": ("done", "done", "current", "pending"),
    "swapped": ("done", "done", "current", "pending"),
    "promoting": ("done", "done", "running", "pending"),
    "complete": ("done", "done", "done", "current"),
}


def recovery_cycle(primary: dict, recovery: dict, running: dict | None, last_kind: str | None,
                   offers: dict[str, Offer]) -> dict:
    """The "Service recovery cycle" wizard: its steps, their status, and which buttons work."""
    phase = cycle_phase(primary, recovery, running, last_kind)
    statuses = _STEP_STATUS[phase]
    steps = []
    for key, status in zip(("failover", "restore", "promote", "done"), statuses, strict=True):
        if key == "done":
            offered = phase == "complete"
            why = "the primary is active again and the recovery service passive" if offered else \
                "finish the steps above first"
        else:
            offered, why = offers[key].offered, offers[key].why
        steps.append({"id": key, "label": LABELS[key], "status": status, "offered": offered, "why": why})
    return {"phase": phase, "steps": steps}


def last_problem(history: list[dict]) -> dict | None:
    """The latest finished operation when it did not succeed (failed, or undone because it was
    unsafe): the console keeps saying so until another operation has run."""
    finished = [o for o in history if o["state"] != "running"]
    if not finished or finished[-1]["state"] == "done":
        return None
    op = finished[-1]
    label = KIND_LABELS.get(op["kind"], op["kind"])
    return {"operation_id": op["operation_id"], "kind": op["kind"], "state": op["state"],
            "message": f"{label} {op['state']}: {op.get('message') or 'see the operation steps'}"}


def offers_json(offers: dict[str, Offer]) -> dict[str, dict]:
    return {k: {**asdict(v), "label": LABELS[k]} for k, v in offers.items()}
