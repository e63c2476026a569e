"""Runs a drill: each step timed, each CRDR move requested through the API and followed to the
end of its operation, a write load through the Service URI from the first move to the last, and
the fork pair removed afterwards (also on Ctrl-C and on failure, unless kept)."""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from pgcrdr.drill import load
from pgcrdr.drill.api import ApiError, DrillApi
from pgcrdr.drill.plan import (
    MOVES,
    DrillKind,
    Move,
    fork_backup_wait,
    fork_names,
    node_progress,
    operation_progress,
)
from pgcrdr.drill.report import DrillReport, Phase, Writes, longest_gap, move_report, rto, summarize

WRITES_BEFORE_MOVES = 20  # acknowledged writes before the first move: the load is really running
LOST_SAMPLE = 10


class DrillFailed(RuntimeError):
    """A step could not be done; the message says which and why."""


class Ui(Protocol):
    """Where a drill shows its progress (a rich progress bar per step, or nothing)."""

    def start(self, name: str) -> None: ...

    def update(self, completed: float, total: float | None, description: str) -> None: ...

    def finish(self, phase: Phase) -> None: ...

    def say(self, line: str) -> None: ...


class Outage(Protocol):
    """The failover drill's fault, scoped to one service's nodes (see docs/decisions.md)."""

    def begin(self, svc: dict[str, Any]) -> str: ...

    def end(self, svc: dict[str, Any]) -> str: ...


@dataclass
class DrillOptions:
    project: str
    pair: str
    kind: DrillKind
    in_place: bool = False
    keep: bool = False
    step_timeout_s: float = 600.0


@dataclass
class Drill:
    api: DrillApi
    outage: Outage
    opts: DrillOptions
    ui: Ui
    clock: Callable[[], float] = time.monotonic
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    # what the drill created (removed at the end unless kept); the pair it rehearses on
    created: list[str] = field(default_factory=list)
    primary: str = ""
    recovery: str = ""
    writer: load.AckWriter | None = None

    def __post_init__(self) -> None:
        self.report = DrillReport(project=self.opts.project, pair=self.opts.pair, kind=self.opts.kind,
                                  in_place=self.opts.in_place,
                                  started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    # --- the drill ------------------------------------------------------------------------------
    def run(self, pri: dict[str, Any], rec: dict[str, Any]) -> DrillReport:
        """``pri`` and ``rec``: the pair's services as the API showed them when the drill was
        accepted (plan.refusal found nothing to refuse)."""
        t0 = self.clock()
        try:
            if self.opts.in_place:
                self.primary, self.recovery = pri["service_name"], rec["service_name"]
            else:
                self._fork(pri, rec)
            self._start_load()
            t_outage: float | None = None
            for item in MOVES[self.opts.kind]:
                if item == "outage":
                    t_outage = self._outage()
                    continue
                assert isinstance(item, Move)
                self._move(item)
                if item.kind == "failover" and t_outage is not None:
                    self._after_failover(t_outage)
            self._final_records()
            self._check_writes()
        except KeyboardInterrupt:
            self.report.state = "interrupted"
            self.report.message = "interrupted (Ctrl-C)" + (
                f"; the pair {self.opts.pair} is left as it is: see its disaster recovery status and finish the "
                "cycle (switch back, or fail back)" if self.opts.in_place else "")
        except (DrillFailed, ApiError, psycopg.Error) as exc:
            self.report.state = "failed"
            self.report.message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else repr(exc)
        except Exception as exc:  # noqa: BLE001 - a bug still ends in cleanup and a kept, failed report
            self.report.state = "failed"
            self.report.message = f"internal error: {type(exc).__name__}: {str(exc)[:400]}"
        finally:
            with _no_interrupts(self.ui):
                self._stop_load()
                if not self.opts.in_place and self.opts.keep and self.report.state != "interrupted" and self.created:
                    self.ui.say(f"kept the drill's forks {', '.join(self.created)} (--keep); remove them with: "
                                f"avn service terminate {self.primary}")
                if not self.opts.in_place and (self.report.state == "interrupted" or not self.opts.keep):
                    try:
                        self._remove_forks()
                    except (DrillFailed, ApiError) as exc:
                        left = ", ".join(self.created)
                        self.report.state = "failed" if self.report.state == "done" else self.report.state
                        self.report.message = "; ".join(filter(None, [
                            self.report.message, f"the forks {left} could not be removed: {exc}; delete them with "
                                                 f"avn service terminate {self.primary}"]))
                        self.ui.say(f"the drill's forks {left} could not be removed: {exc}")
                self.report.duration_s = round(self.clock() - t0, 3)
        self.report = summarize(self.report)
        return self.report

    # --- steps ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[Phase]:
        phase = Phase(name=name)
        self.report.phases.append(phase)
        self.ui.start(name)
        t = self.clock()
        try:
            yield phase
        except KeyboardInterrupt:
            phase.state = "interrupted"
            raise
        except BaseException:
            phase.state = "failed"
            raise
        finally:
            phase.duration_s = round(self.clock() - t, 3)
            self.ui.finish(phase)

    def _wait(self, what: str, check: Callable[[], Any], timeout: float | None = None,
              interval: float = 0.5) -> Any:
        bound = timeout if timeout is not None else self.opts.step_timeout_s
        deadline = self.clock() + bound
        while True:
            value = check()
            if value:
                return value
            if self.clock() > deadline:
                raise DrillFailed(f"timed out after {bound:.0f} s waiting for {what}")
            time.sleep(interval)

    def _fork(self, pri: dict[str, Any], rec: dict[str, Any]) -> None:
        pair = self.opts.pair
        self.primary, self.recovery = fork_names(pair, self.token)
        self.report.forks = [self.primary, self.recovery]
        with self._phase(f"a backup of {pair} to fork") as phase:
            def backed_up() -> bool:
                why = fork_backup_wait(pair, self.api.backups(pair), self.api.dr(pair)["history"])
                self.ui.update(0, None, why or "")
                return why is None

            self._wait(f"a backup of {pair} on its current timeline", backed_up, interval=2.0)
            phase.detail = "the newest backup is recent enough"
        with self._phase(f"fork {pair} in {pri['cloud_name']}") as phase:
            self.created.append(self.primary)  # before the request: an interrupted POST may have created it
            self.api.create_service({
                "service_name": self.primary, "service_type": "pg", "plan": pri["plan"],
                "cloud": pri["cloud_name"], "user_config": {"service_to_fork_from": pair},
                "pgcrdr_drill_of": pair})
            phase.detail = self.primary

            def restored() -> bool:
                svc = self.api.service(self.primary)
                msg = svc.get("status_message") or ""
                if "could not be restored" in msg:
                    raise DrillFailed(f"the fork {self.primary} could not be restored: {msg}")
                cur, mx, what = node_progress(svc)
                self.ui.update(cur, mx or None, what or svc["state"].lower())
                return svc["state"] == "RUNNING"

            self._wait(f"the fork {self.primary} to be RUNNING", restored)
        with self._phase(f"recovery copy in {rec['cloud_name']}") as phase:
            self.created.append(self.recovery)
            self.api.create_service({
                "service_name": self.recovery, "service_type": "pg", "plan": rec["plan"],
                "cloud": rec["cloud_name"],
                "service_integrations": [{"integration_type": "disaster_recovery", "source_service": self.primary}]})
            phase.detail = self.recovery

            def copied() -> bool:
                d = self.api.dr(self.primary)
                if d["operation"]:
                    done, total, now = operation_progress(d["operation"])
                    self.ui.update(done, total, now)
                    return False
                setup = [o for o in d["history"] if o["kind"] == "setup"]
                if setup and setup[-1]["state"] != "done":
                    raise DrillFailed(f"the recovery copy {self.recovery} failed: {setup[-1]['message']}")
                svc = self.api.service(self.recovery)
                return svc["state"] == "RUNNING" and svc["disaster_recovery_role"] == "passive"

            self._wait(f"the recovery copy {self.recovery} to be RUNNING and passive", copied)

    def _start_load(self) -> None:
        with self._phase("write load through the Service URI") as phase:
            uri = self.api.service(self.primary)["service_uri"]

            def table() -> bool:
                try:
                    load.prepare_table(uri)
                    return True
                except psycopg.OperationalError:
                    return False  # the Service URI may still be starting

            self._wait("the Service URI to take writes", table, timeout=60)
            # tcp_user_timeout: a writer that vanished must not hold the client for minutes
            self.writer = load.AckWriter(uri, tcp_user_timeout=3000)
            self.writer.start()
            writer = self.writer
            self._wait(f"{WRITES_BEFORE_MOVES} acknowledged writes",
                       lambda: writer.acked() >= WRITES_BEFORE_MOVES, timeout=60, interval=0.2)
            phase.detail = f"{writer.acked()} acknowledged so far"

    def _outage(self) -> float:
        with self._phase(f"outage of {self.primary}") as phase:
            phase.detail = self.outage.begin(self.api.service(self.primary))
        return self.clock()  # after every node is gone: the next acknowledgement is the new writer's

    def _after_failover(self, t_outage: float) -> None:
        assert self.writer is not None
        writer = self.writer
        with self._phase("first acknowledged write after the outage") as phase:
            self._wait("an acknowledged write through the Service URI after the failover",
                       lambda: writer.acked_after(t_outage), timeout=120, interval=0.2)
            self.report.rto_s = rto(t_outage, list(writer.log.ok_times))
            phase.detail = f"RTO {self.report.rto_s} s"
        with self._phase(f"end of the outage of {self.primary}") as phase:
            # the fence recorded by the failover keeps its nodes down; they come back by the failback
            phase.detail = self.outage.end(self.api.service(self.primary))

    def _move(self, move: Move) -> None:
        target = self.primary if move.side == "primary" else self.recovery
        with self._phase(f"{move.title}: {target} -> {move.role}") as phase:
            seen = {o["operation_id"] for o in self.api.dr(self.primary)["history"]}
            t_request = self.clock()
            self.api.set_role(target, move.role)

            def finished() -> dict[str, Any] | None:
                d = self.api.dr(self.primary)
                if d["operation"]:
                    done, total, now = operation_progress(d["operation"])
                    self.ui.update(done, total, now)
                    return None
                new = [o for o in d["history"] if o["operation_id"] not in seen and o["kind"] == move.kind]
                return new[-1] if new else None

            op = self._wait(f"the {move.kind} operation to end", finished)
            t_end = self.clock()
            phase.detail = f"operation {op['operation_id']}: {op['state']}"
            if op["state"] != "done":
                raise DrillFailed(f"the {move.title} ended {op['state']}: {op.get('message')}")
            writer = self.writer
            assert writer is not None
            # the move's pause ends with the first write after it: wait for it (bounded)
            self._wait(f"writes after the {move.title}", lambda: writer.acked_after(t_end), timeout=120,
                       interval=0.2)
            gap = longest_gap(list(writer.log.ok_times), t_request, t_end)
            self.report.moves.append(move_report(move.title, op, gap))

    def _final_records(self) -> None:
        """The moves' figures as their records stand at the end: a later step may complete an
        earlier record (the failback restore adds the commits a failover gave up to its record)."""
        latest = {o["operation_id"]: o for o in self.api.dr(self.primary)["history"]}
        self.report.moves = [move_report(m.title, latest[m.operation_id], m.client_gap_s)
                             if m.operation_id in latest else m for m in self.report.moves]

    def _check_writes(self) -> None:
        with self._phase("check acknowledged writes on the final writer") as phase:
            log = self._stop_load()
            final = self.api.service(self.primary)
            stored = load.stored_ids(final["service_uri"])
            lost = sorted(set(log.ok) - stored)
            w = self.report.writes
            w.lost, w.lost_sample, w.checked_on = len(lost), lost[:LOST_SAMPLE], self.primary
            phase.detail = f"{w.acknowledged} acknowledged, {w.lost} lost"
            if self.opts.in_place:
                load.drop_table(final["service_uri"])  # the pair keeps nothing of the drill
            if lost and self.opts.kind == "switchover":
                raise DrillFailed(f"{len(lost)} acknowledged writes are missing after planned moves")
            if lost:
                self.report.message = (f"{len(lost)} acknowledged writes lost: the failover gave them up (see data "
                                       "given up)")

    def _stop_load(self) -> load.WriteLog:
        if self.writer is None:
            return load.WriteLog()
        log = self.writer.stop()
        self.writer = None
        self.report.writes = Writes(acknowledged=len(log.ok), failed=len(log.failed), unknown=len(log.unknown),
                                    lost=self.report.writes.lost, lost_sample=self.report.writes.lost_sample,
                                    checked_on=self.report.writes.checked_on)
        return log

    def _remove_forks(self) -> None:
        if not self.created:
            return
        with self._phase("remove the forks") as phase:
            existing = [n for n in self.created if self._exists(n)]
            if existing:
                # an operation moving the fork pair is let finish: the pair is removed as a whole after it
                self._wait(f"the operation on {self.primary} to end before removing it",
                           lambda: not self._running(self.primary))
                for name in existing:
                    if self._exists(name):
                        self.api.delete_service(name)  # a drill fork's pair goes as a whole
                self._wait("the forks to be terminated", lambda: not any(self._exists(n) for n in existing),
                           timeout=180)
            phase.detail = ", ".join(existing) or "nothing was created"
            self.ui.say(f"removed the drill's forks: {phase.detail}")

    def _exists(self, name: str) -> bool:
        return self.api.service_or_none(name) is not None

    def _running(self, name: str) -> bool:
        """A move runs on the pair (building its copy does not count: deleting the pair cancels it)."""
        try:
            op = self.api.dr(name)["operation"]
            return bool(op) and op["kind"] != "setup"
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise


@contextlib.contextmanager
def _no_interrupts(ui: Ui) -> Iterator[None]:
    """Cleanup runs to its end: a second Ctrl-C only says so (the forks would be left behind)."""
    def said(*_: object) -> None:
        ui.say("removing the drill's forks; please wait (they would be left behind otherwise)")

    try:
        previous = signal.signal(signal.SIGINT, said)
    except ValueError:  # not the main thread: nothing to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
