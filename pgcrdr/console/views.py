"""What the console shows for a CRDR pair, decided from the API's own JSON (pure, no I/O).

The console offers only the actions that make sense in the current state of the pair; the
server still validates every request (pgcrdr.controlplane.transitions) and the console shows
its message when it refuses one (the state may have moved since the page last looked).

Inputs are the API shapes: service objects as ``GET /v1/project/P/service/S`` returns them and
operations as ``GET .../disaster-recovery`` returns them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

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


# --- what a person reads about nodes, messages and operations ---------------------------------

# The API's node words are Aiven's (``master``, ``syncing_data``, ``leaving``): the console says
# what they mean.
NODE_ROLE_WORDS = {"master": "primary", "standby": "standby"}
NODE_STATE_WORDS = {"running": "running", "syncing_data": "catching up", "leaving": "stopped",
                    "unknown": "not answering"}
PHASE_WORDS = {"prepare": "preparing", "basebackup": "copying data", "stream": "streaming WAL",
               "finalize": "finishing"}
# What a failback restore is doing, step by step (crdr.STEPS["failback_restore"]).
RESTORE_STEP_WORDS = {
    "preserve": "keeping the old data aside",
    "restore": "restoring the data",
    "rebuild_passive": "starting as a passive copy",
    "wait_passive_in_sync": "catching up with the active service",
}


def _current_step(op: dict) -> dict | None:
    steps = op.get("steps", [])
    return next((s for s in steps if s.get("state") == "running"),
                next((s for s in steps if s.get("state") == "pending"), None))


def _restore_words(svc: dict, running: dict | None) -> str | None:
    """While a failback restore rebuilds ``svc``: what it is doing now, from the operation's own
    steps (the nodes' progress counters know nothing of a rewind or a backup restore)."""
    if running is None or running.get("kind") != "failback_restore" or running.get("service") != svc["service_name"]:
        return None
    step = _current_step(running)
    if step is None:
        return "finishing"
    words = RESTORE_STEP_WORDS.get(step["name"], step["name"].replace("_", " "))
    done = [RESTORE_STEP_WORDS.get(s["name"], s["name"]) for s in running["steps"]
            if s.get("state") == "done" and s["name"] == "restore"]
    return f"data restored; {words}" if done else words


def node_progress(node: dict, svc: dict, running: dict | None) -> list[dict]:
    """The progress shown under a node: ``[{label, max, current}]`` (``max`` None: no bar).

    Shown only while the node is being built (its service REBUILDING, or the node catching up):
    a finished build shows nothing (not a "finalize: done" forever). A counter that says nothing
    (``prepare`` at 0 %) is replaced by what the operation is doing."""
    if svc.get("state") != "REBUILDING" and node.get("state") != "syncing_data":
        return []
    restoring = _restore_words(svc, running)
    out = []
    for p in node.get("progress_updates") or []:
        if p.get("completed"):
            continue
        phase = PHASE_WORDS.get(p.get("phase"), str(p.get("phase")).replace("_", " "))
        current, top = p.get("current") or 0, p.get("max")
        if p.get("unit") == "prepare_percent":
            if current and top:
                out.append({"label": f"{phase}: {current} %", "max": top, "current": current})
            continue  # 0 %: nothing measured yet
        if top:
            out.append({"label": f"{phase}: {fmt_bytes(current)} of {fmt_bytes(top)}", "max": top,
                        "current": current})
        else:
            out.append({"label": phase, "max": None, "current": None})
    if restoring is not None and not any(o["max"] for o in out):
        return [{"label": restoring, "max": None, "current": None}]
    if not out:
        return [{"label": restoring or "preparing", "max": None, "current": None}]
    return out


def node_rows(svc: dict, running: dict | None = None) -> list[dict]:
    """The nodes of a service in words a person reads: ``[{name, role, state, progress}]``. A
    powered-off service's nodes are powered off (not "standby, leaving")."""
    rows = []
    for n in svc.get("node_states") or []:
        if svc.get("state") == "POWEROFF":
            rows.append({"name": n["name"], "role": "–", "state": "powered off", "progress": []})
            continue
        rows.append({
            "name": n["name"],
            "role": NODE_ROLE_WORDS.get(n.get("role"), str(n.get("role"))),
            "state": NODE_STATE_WORDS.get(n.get("state"), str(n.get("state")).replace("_", " ")),
            "progress": node_progress(n, svc, running),
        })
    return rows


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{int(n)} {units[i]}" if i == 0 else f"{n:.1f} {units[i]}"


# Region reports lag the operations by a few seconds: right after an operation verified the new
# writer, its region may still report the election it has just finished.
SETTLE_S = 20.0
_NO_WRITER = re.compile(
    r"no node takes writes right now: (?:its region runs it as a standby cluster; pgcrdr repairs the pair"
    r"|waiting for Patroni to elect a leader)"
    r"|no writer at the moment: waiting for Patroni to elect a leader")


def _epoch(rfc3339: str | None) -> float | None:
    if not rfc3339:
        return None
    try:
        return datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _roles_flipped(op: dict) -> bool:
    """The operation has recorded its new roles (its ``records`` step is done): the writer it
    verified is the one the labels show."""
    return any(st.get("name") == "records" and st.get("state") == "done" for st in op.get("steps", []))


def status_message_now(svc: dict, running: dict | None, history: list[dict], now: float) -> str | None:
    """The service's status message, without what the pair's operation proved stale.

    An operation that verified its new writer and recorded the new roles (still running its last
    step, or ended ``done`` less than SETTLE_S ago) makes a "no writer" message about either side
    untrue now: it comes from a region report taken before the move, or from the demoted side
    restarting as a standby. ``history`` is oldest first."""
    msg = svc.get("status_message")
    if not msg or svc.get("disaster_recovery_role") not in ("active", "passive"):
        return msg
    if running is not None:
        if not _roles_flipped(running):
            return msg
    else:
        finished = [o for o in history if o.get("state") != "running"]
        if not finished:
            return msg
        last = finished[-1]
        ended = _epoch(last.get("finish_time"))
        if last.get("state") != "done" or ended is None or now - ended > SETTLE_S:
            return msg
    kept = [p.strip() for p in _NO_WRITER.sub("", msg).split(";")]
    return "; ".join(p for p in kept if p) or None


def operation_now(op: dict | None) -> dict | None:
    """The running operation as the console shows it: once it has recorded the new roles, a step
    waiting for the demoted side does not say "no writer" (the pair has one: ``to``); it says the
    side restarts as a standby of the new writer."""
    if op is None or not _roles_flipped(op):
        return op
    steps = []
    for st in op.get("steps", []):
        detail = st.get("detail")
        if detail and st.get("state") in ("running", "pending"):
            detail = _NO_WRITER.sub(f"restarting as a standby of {op.get('to')}", detail)
        steps.append({**st, "detail": detail})
    return {**op, "steps": steps}


def service_uri_note(me: dict | None, peer: dict | None) -> str | None:
    """Where this service's Service URI leads when another service of the pair is the writer (one
    Service URI per pair: it follows the writer across failover, switchover and failback)."""
    if me is None or peer is None or me.get("disaster_recovery_role") == "active":
        return None
    if peer.get("disaster_recovery_role") != "active":
        return None
    kind = "recovery service" if me.get("kind") == "primary" else "primary service"
    why = "this service is powered off after the failover" if me.get("state") == "POWEROFF" else \
        "this service is passive"
    return f"The Service URI now reaches the {kind} {peer['service_name']}, which is active ({why})."


def operation_duration_s(steps: list[dict], data: dict) -> float | None:
    """An operation's duration to the millisecond, from its steps' start times (``t_<step>``, epoch
    s) and durations. None when it ended on a failed step (a failed step has no duration: the
    caller falls back to the whole-second timestamps). A step failed and then undone ends with the
    undo steps, which have durations."""
    began = data.get("began_at")
    ends: list[float] = []
    last_failed = False
    for s in steps:
        if s.get("state") == "failed" and s.get("duration_s") is None:
            last_failed = True
            continue
        t, d = data.get(f"t_{s['name']}"), s.get("duration_s")
        if t is None or d is None:
            continue  # skipped, or never ran
        ends.append(t + d)
        last_failed = False
    if began is None or not ends or last_failed:
        return None
    return round(max(ends) - began, 4)


def automatic_failover_text(cfg: dict | None) -> str | None:
    """The pair's automatic failover, in a line (None outside a pair)."""
    if cfg is None:
        return None
    if not cfg.get("enabled"):
        return "Automatic failover: off (fail over by request)"
    return (f"Automatic failover: on, after {cfg['grace_seconds']:g} s without an answer from the active region, "
            f"if at most {cfg['max_data_loss_bytes']} bytes would be given up")
