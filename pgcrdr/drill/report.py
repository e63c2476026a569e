"""A drill's report: figures, and the text, Markdown and JSON that show them (pure).

The figures of each move come from its operation's record (duration, write pause, data given
up, cross-region bytes, its steps' durations); the drill adds what only a client can see: the
time from the outage to the first acknowledged write (RTO), the longest wait between two
acknowledged writes around each move, and the acknowledged writes missing at the end.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, Field

from pgcrdr.controlplane.store.base import parse_rfc3339


class Phase(BaseModel):
    """One step of the drill, timed by the drill (monotonic clock)."""

    name: str
    state: Literal["done", "failed", "interrupted"] = "done"
    duration_s: float | None = None
    detail: str | None = None


class StepFigures(BaseModel):
    name: str
    state: str
    duration_s: float | None


class MoveReport(BaseModel):
    """One CRDR move as its operation recorded it, plus the client's view of its write pause."""

    title: str
    kind: str
    operation_id: str
    state: str
    duration_s: float | None  # the record's finish_time - create_time (the control plane's clock, whole seconds)
    steps_s: float | None = None  # the sum of the record's steps' durations (to the millisecond)
    write_pause_s: float | None  # the record's
    client_gap_s: float | None  # the longest wait between two acknowledged writes around the move
    steps: list[StepFigures] = Field(default_factory=list)
    data_loss: dict[str, Any] | None = None  # failover: the data the record says was given up
    cross_region_bytes: int | None = None  # failback restore: as the record counts them
    restore_source: str | None = None
    message: str | None = None


class Writes(BaseModel):
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    lost: int | None = None  # acknowledged, missing on the final writer (None: not checked)
    lost_sample: list[str] = Field(default_factory=list)
    checked_on: str | None = None


class DrillReport(BaseModel):
    project: str
    pair: str
    kind: Literal["switchover", "failover"]
    in_place: bool
    forks: list[str] = Field(default_factory=list)  # the fork pair (primary, recovery); [] in place
    started: str
    state: Literal["done", "failed", "interrupted"] = "done"
    message: str | None = None
    duration_s: float | None = None
    rto_s: float | None = None  # failover: outage -> first acknowledged write (client clock)
    phases: list[Phase] = Field(default_factory=list)
    moves: list[MoveReport] = Field(default_factory=list)
    writes: Writes = Field(default_factory=Writes)
    data_given_up: dict[str, Any] | None = None  # the failover's record
    cross_region_bytes: int | None = None  # the failback restore's record


def record_duration(op: dict[str, Any]) -> float | None:
    """An operation's duration as its own record says (both times from the control plane's clock)."""
    start, end = parse_rfc3339(op.get("create_time")), parse_rfc3339(op.get("finish_time"))
    return round(end - start, 3) if start is not None and end is not None else None


def steps_total(op: dict[str, Any]) -> float | None:
    durations = [s.get("duration_s") for s in op.get("steps") or []]
    known = [d for d in durations if d is not None]
    return round(sum(known), 3) if known else None


def first_after(times: list[float], t: float) -> float | None:
    return next((x for x in sorted(times) if x > t), None)


def rto(t_outage: float, ok_times: list[float]) -> float | None:
    """Seconds from the outage to the first acknowledged write after it (None: none yet)."""
    first = first_after(ok_times, t_outage)
    return round(first - t_outage, 3) if first is not None else None


def longest_gap(ok_times: list[float], start: float, end: float) -> float | None:
    """The longest wait between two consecutive acknowledged writes over a move requested at
    ``start`` and finished at ``end``: from the last write before ``start`` to the first after
    ``end``, every acknowledgement in between counted. None when no write bounds it on a side."""
    times = sorted(ok_times)
    before = [t for t in times if t <= start]
    after = first_after(times, end)
    if not before or after is None:
        return None
    span = [before[-1], *[t for t in times if start < t <= end], after]
    return round(max(b - a for a, b in itertools.pairwise(span)), 3)


def move_report(title: str, op: dict[str, Any], client_gap_s: float | None) -> MoveReport:
    details = op.get("details") or {}
    found = details.get("restore")
    restore: dict[str, Any] = found if isinstance(found, dict) else {}
    crb = restore.get("cross_region_bytes")
    return MoveReport(
        title=title, kind=op["kind"], operation_id=op["operation_id"], state=op["state"],
        duration_s=record_duration(op), write_pause_s=op.get("write_pause_s"), client_gap_s=client_gap_s,
        steps_s=steps_total(op),
        steps=[StepFigures(name=s["name"], state=s["state"], duration_s=s.get("duration_s"))
               for s in op.get("steps") or []],
        data_loss=op.get("data_loss") if op["kind"] == "failover" else None,
        cross_region_bytes=int(crb) if isinstance(crb, int) else None,
        restore_source=restore.get("source"), message=op.get("message"),
    )


def summarize(report: DrillReport) -> DrillReport:
    """The pair-level figures taken from the moves' records."""
    failover = next((m for m in report.moves if m.kind == "failover"), None)
    restore = next((m for m in report.moves if m.kind == "failback_restore"), None)
    return report.model_copy(update={
        "data_given_up": failover.data_loss if failover else None,
        "cross_region_bytes": restore.cross_region_bytes if restore else None,
    })


# --- rendering --------------------------------------------------------------------------------

def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _whole(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def _bytes(n: int | None) -> str:
    if n is None:
        return "not recorded"
    return f"{n} B" if n < 1024 else f"{n} B ({n / 2**20:.2f} MiB)"


def data_given_up_text(loss: dict[str, Any] | None) -> str:
    if loss is None:
        return "-"
    if loss.get("known"):
        return f"{loss.get('bytes')} B (exact: the primary answered)"
    lower = loss.get("lower_bound_bytes")
    commits = loss.get("divergent_commits")
    return ("unknown (the primary could not be asked)" + (f"; at least {lower} B" if lower is not None else "")
            + (f"; {commits} commits kept aside by the failback" if commits is not None else ""))


def _writes_text(w: Writes) -> str:
    lost = "not checked" if w.lost is None else str(w.lost)
    return (f"{w.acknowledged} acknowledged, {w.failed} failed, {w.unknown} unknown; acknowledged and lost: {lost}"
            + (f" (checked on {w.checked_on})" if w.checked_on else ""))


def as_text(r: DrillReport) -> str:
    where = f"on forks {', '.join(r.forks)}" if r.forks else "in place"
    lines = [f"{r.kind} drill of {r.project}/{r.pair} {where}: {r.state}"
             + (f" ({r.message})" if r.message else ""),
             f"  duration:            {_s(r.duration_s)}"]
    if r.kind == "failover":
        lines += [f"  RTO:                 {_s(r.rto_s)} (outage to the first acknowledged write)",
                  f"  data given up:       {data_given_up_text(r.data_given_up)}",
                  f"  cross-region bytes:  {_bytes(r.cross_region_bytes)} (failback restore)"]
    lines.append(f"  writes:              {_writes_text(r.writes)}")
    lines.append("  moves:")
    for m in r.moves:
        lines.append(f"    {m.title:<18} {m.state:<7} {_whole(m.duration_s):>6} (steps {_s(m.steps_s)})  "
                     f"write pause {_s(m.write_pause_s)} "
                     f"(client saw {_s(m.client_gap_s)})  operation {m.operation_id}")
        for s in m.steps:
            lines.append(f"      {s.name:<22} {s.state:<8} {_s(s.duration_s)}")
    lines.append("  drill steps:")
    for p in r.phases:
        lines.append(f"    {p.name:<48} {p.state:<11} {_s(p.duration_s):>9}" + (f"  {p.detail}" if p.detail else ""))
    return "\n".join(lines)


def as_markdown(r: DrillReport) -> str:
    where = f"on forks `{'`, `'.join(r.forks)}`" if r.forks else "in place"
    out = [f"## {r.kind.capitalize()} drill of `{r.pair}` ({r.project}) {where}: {r.state}", ""]
    if r.message:
        out += [r.message, ""]
    out += ["| figure | value |", "|---|---|", f"| duration | {_s(r.duration_s)} |"]
    if r.kind == "failover":
        out += [f"| RTO (outage to first acknowledged write) | {_s(r.rto_s)} |",
                f"| data given up | {data_given_up_text(r.data_given_up)} |",
                f"| cross-region bytes (failback restore) | {_bytes(r.cross_region_bytes)} |"]
    w = r.writes
    out += [f"| acknowledged writes | {w.acknowledged} |",
            f"| acknowledged writes lost | {'not checked' if w.lost is None else w.lost} |", ""]
    out += ["| move | state | duration | in steps | write pause (record) | client gap | operation |",
            "|---|---|---|---|---|---|---|"]
    out += [f"| {m.title} | {m.state} | {_whole(m.duration_s)} | {_s(m.steps_s)} | {_s(m.write_pause_s)} | "
            f"{_s(m.client_gap_s)} | `{m.operation_id}` |" for m in r.moves]
    out += ["", "| drill step | state | duration |", "|---|---|---|"]
    out += [f"| {p.name} | {p.state} | {_s(p.duration_s)} |" for p in r.phases]
    return "\n".join(out) + "\n"


def history_lines(drills: list[dict[str, Any]]) -> list[str]:
    """``pgcrdr drill history``: one line per kept drill, oldest first."""
    out = []
    for d in drills:
        r = d.get("report") or {}
        lost = (r.get("writes") or {}).get("lost")
        out.append(" ".join(filter(None, [
            d["drill_id"], d["create_time"], d["kind"], "in-place" if d["in_place"] else "fork", d["state"],
            f"RTO {_s(r.get('rto_s'))}" if d["kind"] == "failover" else "",
            f"lost writes {'-' if lost is None else lost}", f"duration {_s(r.get('duration_s'))}",
        ])))
    return out
