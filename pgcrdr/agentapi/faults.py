"""Faults injected at the control plane's agent client, for tests and drills: one region's agent
looks frozen, slow or refusing *from the control plane's point of view*, for a while, while the
agent itself runs untouched.

Rules live in ``<PGCRDR_HOME>/control/agent-faults.json`` (``{"rules": [FaultRule, ...]}``),
written atomically by ``inject`` / ``clear`` (or ``pgcrdr drill agent-fault``) and read by
``AgentClient`` before each request (``FaultFile``: cached by mtime, one ``stat`` when absent).
Modes, for a request the rule matches while it is active:

- ``freeze``: nothing is sent; the call waits until the rule ends or its own timeout, whichever
  comes first, then fails as a timeout would (``unreachable: timed out``).
- ``slow``: the call waits ``delay_s``, then is sent.
- ``fail``: nothing is sent; the call fails at once as a refused connection would.

``lose_answer`` sends the request (the agent executes it) and throws the answer away, then fails
as a timeout (after the freeze wait, or the slow delay before sending): the "lost answer" case a
caller must resolve by asking again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from pgcrdr.security.files import write_secret

log = logging.getLogger(__name__)

FAULTS_FILE = "agent-faults.json"


class FaultRule(BaseModel):
    region: str = Field(min_length=1)  # cloud name, e.g. local-europe-west1
    mode: Literal["freeze", "slow", "fail"]
    until: float  # epoch seconds: the rule is active before this instant
    delay_s: float = Field(default=0.0, ge=0, le=3600)  # slow: added before sending
    methods: list[str] = Field(default_factory=list)  # e.g. ["POST"]; empty: every method
    path_contains: str | None = None  # e.g. "/promote"; None: every path
    lose_answer: bool = False

    def active(self, now: float) -> bool:
        return now < self.until

    def matches(self, region: str | None, method: str, path: str, now: float) -> bool:
        """Whether this rule applies to ``method path`` sent to ``region`` at ``now``. Pure."""
        return (self.active(now) and region == self.region
                and (not self.methods or method.upper() in (m.upper() for m in self.methods))
                and (self.path_contains is None or self.path_contains in path))


class FaultSet(BaseModel):
    rules: list[FaultRule] = Field(default_factory=list)


def matching_rule(rules: list[FaultRule], region: str | None, method: str, path: str,
                  now: float) -> FaultRule | None:
    """The newest (last written) active rule matching the request, if any. Pure."""
    for rule in reversed(rules):
        if rule.matches(region, method, path, now):
            return rule
    return None


def faults_path(home: Path | str) -> Path:
    return Path(home) / "control" / FAULTS_FILE


class FaultFile:
    """Reads the rules of a fault file, again only when its mtime or size changed; no file means
    no fault. An unreadable file is logged once and means no fault (a drill must not break the
    control plane)."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._rules: list[FaultRule] = []

    def rules(self) -> list[FaultRule]:
        try:
            st = self.path.stat()
        except OSError:
            self._seen, self._rules = None, []
            return []
        key = (st.st_mtime_ns, st.st_size)
        if key != self._seen:
            try:
                rules = FaultSet.model_validate_json(self.path.read_bytes()).rules
            except (OSError, ValueError) as exc:
                log.warning("ignoring the agent fault file %s: %s", self.path, exc)
                rules = []
            self._seen, self._rules = key, rules
        return self._rules

    def match(self, region: str | None, method: str, path: str, now: float | None = None) -> FaultRule | None:
        if region is None:
            return None
        return matching_rule(self.rules(), region, method, path, time.time() if now is None else now)


# --- writing the rules (tests, drills, ``pgcrdr drill agent-fault``) ----------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialises read-modify-write of the fault file between processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_rules(path: Path) -> list[FaultRule]:
    try:
        return FaultSet.model_validate_json(path.read_bytes()).rules
    except FileNotFoundError:
        return []


def write_rules(path: Path, rules: list[FaultRule]) -> None:
    """Replace the file atomically (``write_secret``): a reader sees the old rules or the new ones."""
    write_secret(path, FaultSet(rules=rules).model_dump_json(indent=1))


def inject(home: Path | str, rule: FaultRule, now: float | None = None) -> Path:
    """Add ``rule`` (the newest rule wins where several match); expired rules are dropped."""
    path = faults_path(home)
    now = time.time() if now is None else now
    with _locked(path):
        rules = [r for r in read_rules(path) if r.active(now)]
        write_rules(path, [*rules, rule])
    return path


def clear(home: Path | str, region: str | None = None) -> int:
    """Remove the rules of ``region`` (every rule when None); returns how many were removed."""
    path = faults_path(home)
    with _locked(path):
        rules = read_rules(path)
        if not rules:
            return 0
        kept = [r for r in rules if region is not None and r.region != region]
        write_rules(path, kept)
    return len(rules) - len(kept)
