"""The control plane's state behind one interface: projects, services, integrations, operations,
API tokens (hashed), settings (meta) and the event log.

:class:`Store` is what the rest of the control plane uses; a backend supplies its transactions
(:meth:`Store.transaction`, :meth:`Store.read`) and the record-level reads and writes of
:class:`Tx`. Everything else, what a token's use changes, what a write of an operation records
in the event log, lives here once, so the backends behave the same:

- ``pgcrdr.controlplane.store.sqlite``: SQLite (WAL mode) in one file, the embedded default;
- ``pgcrdr.controlplane.store.etcd``: etcd v3, for a control plane on several hosts.

A transaction function may be run more than once (a backend with optimistic concurrency runs
it again when a concurrent write changed what it read), so it must have no effect outside its
:class:`Tx` other than its result.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from pgcrdr.controlplane.records import (
    DrillRecord,
    IntegrationRecord,
    OperationRecord,
    ProjectRecord,
    ServiceRecord,
)

T = TypeVar("T")


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class StoreError(RuntimeError):
    """The store cannot do what was asked now (not a bug of the caller): the message says why."""


class StoreConflict(StoreError):
    """A transaction kept meeting concurrent writes to what it read; nothing of it was written."""


class StoreUnavailable(StoreError):
    """No replica of the store answered (or none could say whether a write was applied)."""


class StoreFenced(StoreError):
    """A leader's write refused because this replica no longer leads; nothing of it was written."""


@dataclass(frozen=True)
class TokenRow:
    """An API token as stored: never the token itself, only its hash and its prefix."""

    token_hash: str
    token_prefix: str | None
    description: str
    create_time: str
    max_age_seconds: int | None
    extend_when_used: bool
    expiry: float | None
    last_used: float | None
    created_manually: bool

    def expired(self, now: float) -> bool:
        return self.expiry is not None and now >= self.expiry


@dataclass(frozen=True)
class EventRow:
    id: int
    project: str
    time: str
    actor: str
    event_type: str
    service_name: str | None
    event_desc: str


TOKEN_PREFIX_CHARS = 10  # of a 43-character token: shown in lists, enough to revoke it, useless to log in
# A token's last use is written at most this often (a write per request would cost an fsync each);
# an ``extend_when_used`` token's expiry moves with it, so it is also bounded by a tenth of its max age.
TOKEN_TOUCH_INTERVAL_S = 60.0
EVENTS_KEPT_PER_PROJECT = 10_000
SYSTEM_ACTOR = "pgcrdr"  # the actor of what the control plane does by itself (operations)


def prune_every(keep: int) -> int:
    """An event log keeps its project's newest ``keep``: counting them costs a walk of ``keep``
    entries, so the oldest are removed every this many inserts (a 1/100th of ``keep``, at most 100)."""
    return max(1, min(100, keep // 100))


class Tx(ABC):
    """Reads and writes inside one store transaction (see :meth:`Store.transaction`).

    What it reads is one consistent state, its own writes included; what it writes is
    committed at once, or not at all when the transaction function raises."""

    # services ----------------------------------------------------------------------------
    @abstractmethod
    def service(self, project: str, name: str) -> ServiceRecord | None: ...

    @abstractmethod
    def services(self, project: str | None = None) -> list[ServiceRecord]:
        """Ordered by project, then name."""

    @abstractmethod
    def put_service(self, svc: ServiceRecord) -> None: ...

    @abstractmethod
    def delete_service(self, project: str, name: str) -> None: ...

    # projects ----------------------------------------------------------------------------
    @abstractmethod
    def project(self, name: str) -> ProjectRecord | None: ...

    @abstractmethod
    def projects(self) -> list[ProjectRecord]:
        """Ordered by name."""

    @abstractmethod
    def put_project(self, project: ProjectRecord) -> None: ...

    # integrations ------------------------------------------------------------------------
    @abstractmethod
    def integrations(self, project: str) -> list[IntegrationRecord]:
        """In the order they were created."""

    @abstractmethod
    def put_integration(self, rec: IntegrationRecord) -> None: ...

    @abstractmethod
    def delete_integration(self, project: str, integration_id: str) -> None: ...

    # operations --------------------------------------------------------------------------
    @abstractmethod
    def operation(self, operation_id: str) -> OperationRecord | None: ...

    @abstractmethod
    def operations(self, project: str, pair: str | None = None) -> list[OperationRecord]:
        """Oldest first (by ``create_time``, then the order they were written)."""

    @abstractmethod
    def running_operation(self, project: str, pair: str) -> OperationRecord | None: ...

    @abstractmethod
    def running_operations(self) -> list[OperationRecord]:
        """Oldest first."""

    @abstractmethod
    def write_operation(self, op: OperationRecord) -> None:
        """Store ``op`` as it is; callers use :meth:`put_operation`."""

    def put_operation(self, op: OperationRecord) -> bool:
        """Write ``op``. An operation that ended (done, failed, undone; e.g. superseded by a
        user's request) never becomes running again: such a write is dropped (False).

        Its start and its end are recorded in the project's event log, in the same transaction:
        the stored state before the write tells a first write and an ending one from the many
        progress writes in between."""
        stored = self.operation(op.operation_id)
        before = stored.state if stored is not None else None
        if op.state == "running" and before is not None and before != "running":
            return False
        self.write_operation(op)
        for event_type, desc in operation_events(before, op):
            self.add_event(op.project, SYSTEM_ACTOR, event_type, desc, service_name=op.service)
        return True

    # drills ------------------------------------------------------------------------------
    @abstractmethod
    def drills(self, project: str, pair: str) -> list[DrillRecord]:
        """Oldest first (by ``create_time``, then the order they were written)."""

    @abstractmethod
    def put_drill(self, rec: DrillRecord) -> None: ...

    # events ------------------------------------------------------------------------------
    @abstractmethod
    def add_event(self, project: str, actor: str, event_type: str, event_desc: str,
                  service_name: str | None = None, when: str | None = None,
                  keep: int = EVENTS_KEPT_PER_PROJECT) -> None:
        """Append an event to ``project``'s log ("" for events outside any project, e.g. a login),
        keeping the newest ``keep`` of that project (pruned every :func:`prune_every` inserts)."""

    @abstractmethod
    def events(self, project: str, limit: int, service_name: str | None = None) -> list[EventRow]:
        """The project's newest events first."""

    # tokens ------------------------------------------------------------------------------
    @abstractmethod
    def token(self, token_hash: str) -> TokenRow | None: ...

    @abstractmethod
    def tokens(self) -> list[TokenRow]:
        """Every stored token, expired ones included, by ``create_time`` then the order they were added."""

    @abstractmethod
    def tokens_with_prefix(self, prefix: str) -> list[TokenRow]: ...

    @abstractmethod
    def put_token(self, row: TokenRow) -> None: ...

    @abstractmethod
    def delete_token(self, token_hash: str) -> None: ...

    # meta --------------------------------------------------------------------------------
    @abstractmethod
    def meta(self, key: str) -> str | None: ...

    @abstractmethod
    def put_meta(self, key: str, value: str) -> None: ...


def operation_events(before: str | None, op: OperationRecord) -> list[tuple[str, str]]:
    """The events a write of ``op`` makes, given its stored state ``before`` (None: first write)."""
    out = []
    what = f"{op.kind.replace('_', ' ')} of pair {op.pair}"
    if before is None:
        out.append((f"crdr_{op.kind}_start",
                    f"{what} started: {op.service} to {op.requested_role} (writer {op.source} -> {op.target})"))
    if op.state != "running" and before != op.state and before in (None, "running"):
        start, end = parse_rfc3339(op.create_time), parse_rfc3339(op.finish_time)
        parts = [f"{what} {op.state}"]
        if start is not None and end is not None:
            parts.append(f"in {max(0.0, end - start):.0f} s")
        if op.write_pause_s is not None:
            parts.append(f"write pause {op.write_pause_s:.2f} s")
        desc = ", ".join(parts) + (f": {op.message}" if op.message else "")
        out.append((f"crdr_{op.kind}_{op.state}", desc))
    return out


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, salt_hex, _ = stored.split("$")
    except ValueError:
        return False
    return secrets.compare_digest(hash_password(password, bytes.fromhex(salt_hex)), stored)


class Store(ABC):
    """The control plane's state. Every public method is one transaction.

    Services are JSON documents keyed by (project, name); callers read-modify-write them with
    :meth:`update_service` or :meth:`transaction`, so the API and the reconciler never
    overwrite each other's changes."""

    def __init__(self) -> None:
        self.events_keep = EVENTS_KEPT_PER_PROJECT

    @abstractmethod
    def transaction(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` as one atomic read-modify-write over several records (e.g. a role change
        of a pair) and return its result. ``fn`` raising writes nothing. ``fn`` may be run
        again when a concurrent write changed what it read (see the module's docstring);
        :class:`StoreConflict` when that keeps happening."""

    @abstractmethod
    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` over one consistent state, for reads only."""

    @abstractmethod
    def close(self) -> None: ...

    # meta -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        return self.read(lambda tx: tx.meta(key))

    def set_meta(self, key: str, value: str) -> None:
        self.transaction(lambda tx: tx.put_meta(key, value))

    # tokens -----------------------------------------------------------------------------
    def add_token(self, token: str, description: str, create_time: str, *, max_age_seconds: int | None = None,
                  extend_when_used: bool = False, created_manually: bool = False,
                  now: float | None = None) -> TokenRow:
        """Store a new token (hashed; its prefix kept to list and revoke it). With ``max_age_seconds``
        it expires that long after its creation, or after its last use if ``extend_when_used``."""
        now = time.time() if now is None else now
        row = TokenRow(token_hash=hash_token(token), token_prefix=token[:TOKEN_PREFIX_CHARS], description=description,
                       create_time=create_time, max_age_seconds=max_age_seconds, extend_when_used=extend_when_used,
                       expiry=now + max_age_seconds if max_age_seconds is not None else None, last_used=None,
                       created_manually=created_manually)
        self.transaction(lambda tx: tx.put_token(row))
        return row

    def token_info(self, token: str) -> TokenRow | None:
        """The stored row of ``token`` (expired or not); None if unknown or revoked."""
        return self.read(lambda tx: tx.token(hash_token(token)))

    def token_valid(self, token: str, now: float | None = None) -> bool:
        """Whether ``token`` may be used now: known, not revoked, not expired. A use is recorded
        (at most every TOKEN_TOUCH_INTERVAL_S) and moves an ``extend_when_used`` token's expiry."""
        now = time.time() if now is None else now
        info = self.token_info(token)
        if info is None or info.expired(now):
            return False
        interval = TOKEN_TOUCH_INTERVAL_S
        if info.max_age_seconds:
            interval = min(interval, info.max_age_seconds / 10)
        if info.last_used is None or now - info.last_used >= interval or info.token_prefix is None:
            expiry = now + info.max_age_seconds if info.extend_when_used and info.max_age_seconds else info.expiry

            def touch(tx: Tx) -> None:
                cur = tx.token(info.token_hash)
                if cur is not None:  # revoked meanwhile: updates nothing
                    tx.put_token(replace(cur, last_used=now, expiry=expiry,
                                         token_prefix=cur.token_prefix or token[:TOKEN_PREFIX_CHARS]))

            self.transaction(touch)
        return True

    def list_tokens(self, now: float | None = None) -> list[TokenRow]:
        """Every token that is still valid, oldest first (expired ones are dropped here)."""
        now = time.time() if now is None else now

        def drop_expired(tx: Tx) -> list[TokenRow]:
            rows = tx.tokens()
            for row in rows:
                if row.expired(now):
                    tx.delete_token(row.token_hash)
            return [row for row in rows if not row.expired(now)]

        return self.transaction(drop_expired)

    def revoke_token(self, token_or_prefix: str) -> list[TokenRow]:
        """Delete the token given in full, or the one whose prefix is exactly this; returns the
        tokens that matched: it deleted only if exactly one did (a shared prefix revokes nothing).
        A revoked token is refused from its next request on (nothing caches tokens)."""

        def revoke(tx: Tx) -> list[TokenRow]:
            rows = _matching_tokens(tx, token_or_prefix)
            if len(rows) == 1:
                tx.delete_token(rows[0].token_hash)
            return rows

        return self.transaction(revoke)

    def update_token_description(self, token_hash: str, description: str) -> TokenRow | None:
        def describe(tx: Tx) -> TokenRow | None:
            row = tx.token(token_hash)
            if row is None:
                return None
            row = replace(row, description=description)
            tx.put_token(row)
            return row

        return self.transaction(describe)

    def find_token(self, token_or_prefix: str) -> list[TokenRow]:
        """The token given in full, else the tokens with exactly this prefix."""
        return self.read(lambda tx: _matching_tokens(tx, token_or_prefix))

    # events -----------------------------------------------------------------------------
    def add_event(self, project: str, actor: str, event_type: str, event_desc: str,
                  service_name: str | None = None) -> None:
        keep = self.events_keep
        self.transaction(lambda tx: tx.add_event(project, actor, event_type, event_desc,
                                                 service_name=service_name, keep=keep))

    def list_events(self, project: str, limit: int = 100, service_name: str | None = None) -> list[EventRow]:
        """The project's newest events first."""
        return self.read(lambda tx: tx.events(project, limit, service_name))

    # projects ---------------------------------------------------------------------------
    def add_project(self, project: ProjectRecord) -> bool:
        """Insert a project; False if one of that name exists."""

        def add(tx: Tx) -> bool:
            if tx.project(project.name) is not None:
                return False
            tx.put_project(project)
            return True

        return self.transaction(add)

    def get_project(self, name: str) -> ProjectRecord | None:
        return self.read(lambda tx: tx.project(name))

    def list_projects(self) -> list[ProjectRecord]:
        return self.read(lambda tx: tx.projects())

    # services ---------------------------------------------------------------------------
    def add_service(self, svc: ServiceRecord) -> bool:
        """Insert a service; False if the (project, name) is taken (even by one being deleted)."""

        def add(tx: Tx) -> bool:
            if tx.service(svc.project, svc.name) is not None:
                return False
            tx.put_service(svc)
            return True

        return self.transaction(add)

    def get_service(self, project: str, name: str) -> ServiceRecord | None:
        return self.read(lambda tx: tx.service(project, name))

    def list_services(self, project: str | None = None) -> list[ServiceRecord]:
        return self.read(lambda tx: tx.services(project))

    def update_service(
        self, project: str, name: str, change: Callable[[ServiceRecord], ServiceRecord | None]
    ) -> ServiceRecord | None:
        """Apply ``change`` to the stored service atomically; returns the new record.

        ``change`` may raise to abort (nothing is written) or return None to write nothing; like
        any transaction function, it may be called more than once.
        """

        def apply(tx: Tx) -> ServiceRecord | None:
            cur = tx.service(project, name)
            if cur is None:
                return None
            new = change(cur)
            if new is None:
                return cur
            tx.put_service(new)
            return new

        return self.transaction(apply)

    def delete_service(self, project: str, name: str) -> None:
        self.transaction(lambda tx: tx.delete_service(project, name))

    # integrations -----------------------------------------------------------------------
    def list_integrations(self, project: str) -> list[IntegrationRecord]:
        return self.read(lambda tx: tx.integrations(project))

    def get_integration(self, project: str, integration_id: str) -> IntegrationRecord | None:
        return next((i for i in self.list_integrations(project) if i.integration_id == integration_id), None)

    # operations -------------------------------------------------------------------------
    def get_operation(self, operation_id: str) -> OperationRecord | None:
        return self.read(lambda tx: tx.operation(operation_id))

    def list_operations(self, project: str, pair: str | None = None) -> list[OperationRecord]:
        return self.read(lambda tx: tx.operations(project, pair))

    def running_operations(self) -> list[OperationRecord]:
        return self.read(lambda tx: tx.running_operations())

    def put_operation(self, op: OperationRecord) -> bool:
        return self.transaction(lambda tx: tx.put_operation(op))

    def list_drills(self, project: str, pair: str) -> list[DrillRecord]:
        return self.read(lambda tx: tx.drills(project, pair))

    def put_drill(self, rec: DrillRecord) -> None:
        self.transaction(lambda tx: tx.put_drill(rec))


def _matching_tokens(tx: Tx, token_or_prefix: str) -> list[TokenRow]:
    """The token given in full, else the tokens with exactly this prefix."""
    row = tx.token(hash_token(token_or_prefix))
    return [row] if row is not None else tx.tokens_with_prefix(token_or_prefix)
