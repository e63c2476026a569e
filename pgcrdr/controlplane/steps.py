"""Typed outcomes of an operation step, and what each means at each phase of a move.

A step either finishes (returns a sentence) or raises one of these. What the runner does with
them depends on how far the move has gone (``Phase``), so that the rule "once the old writer is
demoted the only ends are: the move completes, or it is undone and the old writer takes writes
again" is decided in one table (``decide_on_error``) that the tests read as values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pgcrdr.agentapi.client import AgentError


class Wait(Exception):
    """Not finished yet; ask again on a later tick (the reason is shown on the step)."""


class Transient(Exception):
    """A part did not answer: transport failure, timeout, 5xx, or an answer that was lost.
    Retried with backoff; the phase decides for how long."""


class StepRefused(Exception):
    """A definite refusal (4xx): the part answered and changed nothing."""


class Unsafe(Exception):
    """The step proved the move unsafe (e.g. the target never received the old writer's
    final LSN): undo it."""


class Fail(Exception):
    """The operation cannot be carried out; nothing it changed needs undoing."""


def classify(exc: AgentError) -> Transient | StepRefused:
    """An agent's error as a step outcome: no answer or a 5xx (its own bounded waits answer
    504) may succeed when asked again; a 4xx is the agent's definite refusal."""
    if exc.status is None or exc.status >= 500:
        return Transient(str(exc))
    return StepRefused(str(exc))


class Phase(StrEnum):
    BEFORE = "before"  # nothing moved: a fault past the retry bound fails the operation
    HELD = "held"  # pooled writes are held, nothing else moved: past the window, undo
    MOVING = "moving"  # the old writer is (being) demoted: past the window or on a refusal, undo
    COMMITTED = "committed"  # the target may be the writer: only completing is safe
    UNDOING = "undoing"  # putting the old writer back: retried until it is done


# The phase of every step of every kind (crdr.STEPS gives their order).
STEP_PHASE: dict[str, Phase] = {
    "precheck": Phase.BEFORE,
    "checkpoint": Phase.BEFORE,
    "pause": Phase.HELD,
    "demote": Phase.MOVING,
    "confirm_lsn": Phase.MOVING,
    "promote": Phase.COMMITTED,
    "repoint": Phase.COMMITTED,
    "resume": Phase.COMMITTED,
    "records": Phase.COMMITTED,
    "wait_passive_in_sync": Phase.COMMITTED,
    # failover: reading positions changes nothing; from the fence on it only goes forward
    "record_lsn": Phase.BEFORE,
    "fence": Phase.COMMITTED,
    # setup and failback restore: the passive side is rebuilt; the writer never moves
    "rebuild_passive": Phase.BEFORE,
    "preserve": Phase.BEFORE,
    "restore": Phase.BEFORE,
    # repair of a pair left without a writer
    "settle": Phase.BEFORE,
    # undo
    "undo_settle": Phase.UNDOING,
    "undo_promote_source": Phase.UNDOING,
    "undo_resume": Phase.UNDOING,
}

Decision = Literal["retry", "wait", "fail", "undo"]


@dataclass(frozen=True)
class ErrorDecision:
    action: Decision
    why: str


def decide_on_error(phase: Phase, error: Exception, failing_for_s: float, retry_bound_s: float,
                    window_left_s: float | None) -> ErrorDecision:
    """What to do when a step raised ``error`` (not Wait): pure, one row per phase.

    ``failing_for_s``: how long this step has been failing; ``window_left_s``: time left of the
    window in which pooled writes may be held (None outside it)."""
    if isinstance(error, Fail):
        if phase in (Phase.BEFORE,):
            return ErrorDecision("fail", "the operation cannot be carried out")
        if phase in (Phase.HELD, Phase.MOVING):
            return ErrorDecision("undo", "the move cannot be carried out")
        return ErrorDecision("wait", "only completing is safe now")
    if isinstance(error, Unsafe):
        if phase in (Phase.HELD, Phase.MOVING, Phase.BEFORE):
            return ErrorDecision("undo", "the move was proved unsafe")
        return ErrorDecision("wait", "only completing is safe now")
    if isinstance(error, StepRefused):
        if phase is Phase.BEFORE:
            return ErrorDecision("fail", "refused before anything moved")
        if phase in (Phase.HELD, Phase.MOVING):
            return ErrorDecision("undo", "refused while the move could still be undone")
        return ErrorDecision("wait", "refused; asked again (only completing is safe now)")
    # Transient (or an unexpected exception: treated as a fault that may pass)
    if phase is Phase.BEFORE:
        if failing_for_s >= retry_bound_s:
            return ErrorDecision("fail", f"no answer for {failing_for_s:.0f} s (bound {retry_bound_s:g} s)")
        return ErrorDecision("retry", "retried with backoff")
    if phase in (Phase.HELD, Phase.MOVING):
        if window_left_s is not None and window_left_s <= 0:
            return ErrorDecision("undo", "no answer within the window in which writes may be held")
        return ErrorDecision("retry", "retried within the pause window")
    return ErrorDecision("retry", "retried until it is settled (only completing is safe now)")


BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)


def backoff(attempt: int) -> float:
    """Delay before retry ``attempt`` (1-based): short at first, capped at 2 s so that a part
    answering again is noticed within seconds."""
    return BACKOFF_S[min(max(attempt, 1), len(BACKOFF_S)) - 1]
