"""What a drill does, and what it refuses, as values (no I/O).

A drill is a list of steps. The moves are the CRDR cycle's own requests (crdr.md): each is a
``PUT .../service/S {"disaster_recovery_role": ROLE}`` on one side of the pair, whose operation
the drill then follows to its end.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

DrillKind = Literal["switchover", "failover"]
Side = Literal["primary", "recovery"]
MAX_NAME = 64


@dataclass(frozen=True)
class Move:
    """One CRDR request of the cycle: set ``side``'s role to ``role``; an operation of ``kind`` follows."""

    title: str
    side: Side
    role: str
    kind: str


# The cycles, top to bottom (crdr.md "The cycle"); "outage" is the drill's own fault.
MOVES: dict[str, list[Move | str]] = {
    "switchover": [
        Move("switchover", "recovery", "active", "switchover"),
        Move("switchback", "primary", "active", "switchback"),
    ],
    "failover": [
        "outage",
        Move("failover", "primary", "failed", "failover"),
        Move("failback restore", "primary", "passive", "failback_restore"),
        Move("failback takeover", "primary", "active", "failback_promote"),
    ],
}


def fork_names(pair: str, token: str) -> tuple[str, str]:
    """The fork pair's names: ``<pair>-drill-<token>`` and its ``-dr`` copy, within the 64
    characters of a service name (the pair's name is cut, never the token)."""
    suffix = f"-drill-{token}"
    base = pair[: MAX_NAME - len(suffix) - len("-dr")].rstrip("-")
    return base + suffix, base + suffix + "-dr"


def refusal(pair: str, svc: dict[str, Any] | None, dr: dict[str, Any] | None) -> str | None:
    """Why a drill cannot start on ``pair`` (one line a user can act on), or None. ``svc`` is
    GET .../service/PAIR (None: it does not exist), ``dr`` its GET .../disaster-recovery."""
    if svc is None or dr is None:
        return f"Service {pair} does not exist"
    kind = dr.get("disaster_recovery_kind")
    peer = dr.get("peer_service")
    if not peer or kind is None:
        return (f"{pair} is not part of a CRDR pair; a drill rehearses a pair's moves (create its recovery service "
                f"first: avn service create NAME --disaster-recovery-copy-for {pair} ...)")
    if kind != "primary":
        return f"{pair} is the recovery service of the pair {peer}; name the pair by its primary: {peer}"
    running = dr.get("operation")
    if running:
        return (f"A {running.get('kind')} operation is already running on the pair {pair}; wait for it to finish "
                "(GET .../disaster-recovery) and run the drill again")
    role, state = dr.get("disaster_recovery_role"), dr.get("state")
    if role != "active" or state != "RUNNING":
        return (f"The pair {pair} is not in its starting state ({pair} is {role}, {state}); a drill starts with the "
                "primary active and RUNNING: finish the cycle first (switch back, or fail back)")
    return None


def peer_refusal(peer: dict[str, Any]) -> str | None:
    """The recovery side must be a passive copy that streams: every move needs it."""
    if peer.get("disaster_recovery_role") != "passive" or peer.get("state") != "RUNNING":
        return (f"The recovery service {peer.get('service_name')} is {peer.get('disaster_recovery_role')}, "
                f"{peer.get('state')}; a drill needs it passive and RUNNING")
    return None


def operation_progress(op: dict[str, Any] | None) -> tuple[int, int, str]:
    """(steps done, steps in all, what it does now) of a running operation record."""
    if not op:
        return 0, 0, ""
    steps = op.get("steps") or []
    done = sum(1 for s in steps if s.get("state") in ("done", "skipped"))
    current = next((s for s in steps if s.get("state") in ("running", "pending")), None)
    now = ""
    if current is not None:
        now = current["name"] + (f": {current['detail']}" if current.get("detail") else "")
    return done, len(steps), now


def node_progress(svc: dict[str, Any]) -> tuple[int, int, str]:
    """(current, max, phase) of the least advanced unfinished progress update of a service's
    nodes (a fork's restore, a copy's basebackup): what a bar can show while it is built."""
    best: tuple[int, int, str] | None = None
    for n in svc.get("node_states") or []:
        for u in n.get("progress_updates") or []:
            if u.get("completed"):
                continue
            cur, mx = u.get("current") or 0, u.get("max") or 0
            if best is None or (mx and cur / mx < (best[0] / best[1] if best[1] else 1)):
                best = (int(cur), int(mx), str(u.get("phase")))
    return best or (0, 0, "")


WRITER_AGAIN = ("switchback", "failback_promote", "repair")


def fork_backup_wait(pair: str, backups: list[dict[str, Any]], history: list[dict[str, Any]]) -> str | None:
    """Why forking ``pair`` now would fail, or None. A fork restores a backup of the primary's
    own region and replays that region's archive; after the primary became the writer again
    (switchback, failback), the WAL of its new timeline's start is only in the region that was
    active meanwhile, so the fork needs a backup taken after that move (the agent takes a full
    one on every new timeline). The new timeline starts when the move's promote step ended, not
    when the move ended (it then waits for the other side to stream, seconds later): the agent's
    backup of the new timeline often ends before the move does, in the same second even."""
    last = max((_promoted_at(o) for o in history
                if o.get("kind") in WRITER_AGAIN and o.get("to") == pair and o.get("state") == "done"), default="")
    newest = max((b.get("backup_time") or "" for b in backups), default="")
    if not newest:
        return f"{pair} has no backup yet"
    if last and _instant(newest) <= _instant(last):
        return f"waiting for a backup of {pair} taken after its move back at {last} (its newest: {newest})"
    return None


def _promoted_at(op: dict[str, Any]) -> str:
    """When ``op`` made its target writable: its promote step's end, else the operation's end."""
    step = next((st for st in op.get("steps") or [] if st.get("name") == "promote" and st.get("finished")), None)
    return str(step["finished"]) if step else str(op.get("finish_time") or "")


def _instant(value: str) -> float:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
