"""Control-plane state in SQLite (WAL mode): projects, services, API tokens, settings, events.

Every public method is one transaction. Services are stored as JSON documents keyed by
(project, name); callers read-modify-write them with :meth:`Store.update_service`, which holds
the store lock for the whole cycle so the API and the reconciler never overwrite each other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pgcrdr.controlplane.records import IntegrationRecord, OperationRecord, ProjectRecord, ServiceRecord


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


TOKEN_FIELDS = ("token_hash, token_prefix, description, create_time, max_age_seconds, extend_when_used, expiry, "
                "last_used, created_manually")


def _token_row(row: tuple) -> TokenRow:
    return TokenRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], bool(row[8]))


@dataclass(frozen=True)
class EventRow:
    id: int
    project: str
    time: str
    actor: str
    event_type: str
    service_name: str | None
    event_desc: str

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    project TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (project, name));
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, description TEXT NOT NULL, create_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS integrations (
    integration_id TEXT PRIMARY KEY, project TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operations (
    operation_id TEXT PRIMARY KEY, project TEXT NOT NULL, pair TEXT NOT NULL, state TEXT NOT NULL,
    create_time TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, time TEXT NOT NULL, actor TEXT NOT NULL,
    event_type TEXT NOT NULL, service_name TEXT, event_desc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_project ON events(project, id);
"""

# Columns added to ``tokens`` after its first release: an existing database gets them in place
# (ALTER TABLE ... ADD COLUMN) when the store opens it. Tokens made before have no prefix (only
# their hash was kept): it is filled in at their first use, when the full token is seen.
TOKEN_COLUMNS = {
    "token_prefix": "TEXT",
    "max_age_seconds": "INTEGER",
    "extend_when_used": "INTEGER NOT NULL DEFAULT 0",
    "expiry": "REAL",  # epoch seconds; NULL: never expires
    "last_used": "REAL",  # epoch seconds
    "created_manually": "INTEGER NOT NULL DEFAULT 0",  # by ``POST /v1/access_token`` (not by a login)
}
TOKEN_PREFIX_CHARS = 10  # of a 43-character token: shown in lists, enough to revoke it, useless to log in
# A token's last use is written at most this often (a write per request would cost an fsync each);
# an ``extend_when_used`` token's expiry moves with it, so it is also bounded by a tenth of its max age.
TOKEN_TOUCH_INTERVAL_S = 60.0
EVENTS_KEPT_PER_PROJECT = 10_000
SYSTEM_ACTOR = "pgcrdr"  # the actor of what the control plane does by itself (operations)


class Tx:
    """Reads and writes inside one store transaction (see :meth:`Store.transaction`)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def service(self, project: str, name: str) -> ServiceRecord | None:
        row = self.db.execute("SELECT doc FROM services WHERE project=? AND name=?", (project, name)).fetchone()
        return ServiceRecord.model_validate_json(row[0]) if row else None

    def put_service(self, svc: ServiceRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO services(project, name, doc) VALUES (?, ?, ?)",
            (svc.project, svc.name, svc.model_dump_json()),
        )

    def integrations(self, project: str) -> list[IntegrationRecord]:
        rows = self.db.execute("SELECT doc FROM integrations WHERE project=?", (project,)).fetchall()
        return [IntegrationRecord.model_validate_json(r[0]) for r in rows]

    def put_integration(self, rec: IntegrationRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO integrations(integration_id, project, doc) VALUES (?, ?, ?)",
            (rec.integration_id, rec.project, rec.model_dump_json()),
        )

    def delete_integration(self, integration_id: str) -> None:
        self.db.execute("DELETE FROM integrations WHERE integration_id=?", (integration_id,))

    def running_operation(self, project: str, pair: str) -> OperationRecord | None:
        row = self.db.execute(
            "SELECT doc FROM operations WHERE project=? AND pair=? AND state='running'", (project, pair)
        ).fetchone()
        return OperationRecord.model_validate_json(row[0]) if row else None

    def put_operation(self, op: OperationRecord) -> bool:
        """Write ``op``. An operation that ended (done, failed, undone; e.g. superseded by a
        user's request) never becomes running again: such a write is dropped (False).

        Its start and its end are recorded in the project's event log, in the same transaction:
        the stored state before the write tells a first write and an ending one from the many
        progress writes in between."""
        row = self.db.execute("SELECT state FROM operations WHERE operation_id=?", (op.operation_id,)).fetchone()
        before = row[0] if row else None
        if op.state == "running" and before is not None and before != "running":
            return False
        self.db.execute(
            "INSERT OR REPLACE INTO operations(operation_id, project, pair, state, create_time, doc) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (op.operation_id, op.project, op.pair, op.state, op.create_time, op.model_dump_json()),
        )
        for event_type, desc in operation_events(before, op):
            self.add_event(op.project, SYSTEM_ACTOR, event_type, desc, service_name=op.service)
        return True

    def add_event(self, project: str, actor: str, event_type: str, event_desc: str,
                  service_name: str | None = None, when: str | None = None,
                  keep: int = EVENTS_KEPT_PER_PROJECT) -> None:
        """Append an event to ``project``'s log ("" for events outside any project, e.g. a login),
        keeping the newest ``keep`` of that project."""
        cur = self.db.execute(
            "INSERT INTO events(project, time, actor, event_type, service_name, event_desc) VALUES (?, ?, ?, ?, ?, ?)",
            (project, when or rfc3339(time.time()), actor, event_type, service_name, event_desc),
        )
        # Ids are shared by all projects, so the project's own newest ``keep`` are counted; that
        # costs a walk of ``keep`` index entries, so it runs every 1/100th of ``keep`` events.
        if (cur.lastrowid or 0) % max(1, min(100, keep // 100)) == 0:
            self.db.execute(
                "DELETE FROM events WHERE project=? AND id <= "
                "(SELECT id FROM events WHERE project=? ORDER BY id DESC LIMIT 1 OFFSET ?)", (project, project, keep))


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


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate_tokens()
        self._lock = threading.RLock()
        self.events_keep = EVENTS_KEPT_PER_PROJECT

    def _migrate_tokens(self) -> None:
        have = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)").fetchall()}
        for name, decl in TOKEN_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE tokens ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS tokens_by_prefix ON tokens(token_prefix)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One atomic read-modify-write over several records (e.g. a role change of a pair)."""
        with self._tx() as db:
            yield Tx(db)

    # meta -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # tokens -----------------------------------------------------------------------------
    def add_token(self, token: str, description: str, create_time: str, *, max_age_seconds: int | None = None,
                  extend_when_used: bool = False, created_manually: bool = False,
                  now: float | None = None) -> TokenRow:
        """Store a new token (hashed; its prefix kept to list and revoke it). With ``max_age_seconds``
        it expires that long after its creation, or after its last use if ``extend_when_used``."""
        now = time.time() if now is None else now
        expiry = now + max_age_seconds if max_age_seconds is not None else None
        with self._tx() as db:
            db.execute(
                f"INSERT INTO tokens({TOKEN_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hash_token(token), token[:TOKEN_PREFIX_CHARS], description, create_time, max_age_seconds,
                 int(extend_when_used), expiry, None, int(created_manually)),
            )
            return _token_row(db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_hash=?",
                                         (hash_token(token),)).fetchone())

    def token_info(self, token: str) -> TokenRow | None:
        """The stored row of ``token`` (expired or not); None if unknown or revoked."""
        with self._lock:
            row = self._db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_hash=?",
                                   (hash_token(token),)).fetchone()
        return _token_row(row) if row else None

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
            with self._tx() as db:  # revoked meanwhile: updates nothing
                db.execute("UPDATE tokens SET last_used=?, expiry=?, token_prefix=COALESCE(token_prefix, ?) "
                           "WHERE token_hash=?", (now, expiry, token[:TOKEN_PREFIX_CHARS], info.token_hash))
        return True

    def list_tokens(self, now: float | None = None) -> list[TokenRow]:
        """Every token that is still valid, oldest first (expired ones are dropped here)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("DELETE FROM tokens WHERE expiry IS NOT NULL AND expiry <= ?", (now,))
            rows = db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens ORDER BY create_time, rowid").fetchall()
        return [_token_row(r) for r in rows]

    def revoke_token(self, token_or_prefix: str) -> list[TokenRow]:
        """Delete the token given in full, or the one whose prefix is exactly this; returns the
        tokens that matched: it deleted only if exactly one did (a shared prefix revokes nothing).
        A revoked token is refused from its next request on (nothing caches tokens)."""
        with self._tx() as db:
            rows = db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_hash=?",
                              (hash_token(token_or_prefix),)).fetchall()
            if not rows:
                rows = db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_prefix=?",
                                  (token_or_prefix,)).fetchall()
            if len(rows) == 1:
                db.execute("DELETE FROM tokens WHERE token_hash=?", (rows[0][0],))
        return [_token_row(r) for r in rows]

    def update_token_description(self, token_hash: str, description: str) -> TokenRow | None:
        with self._tx() as db:
            db.execute("UPDATE tokens SET description=? WHERE token_hash=?", (description, token_hash))
            row = db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_hash=?", (token_hash,)).fetchone()
        return _token_row(row) if row else None

    def find_token(self, token_or_prefix: str) -> list[TokenRow]:
        """The token given in full, else the tokens with exactly this prefix."""
        info = self.token_info(token_or_prefix)
        if info is not None:
            return [info]
        with self._lock:
            rows = self._db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_prefix=?",
                                    (token_or_prefix,)).fetchall()
        return [_token_row(r) for r in rows]

    # events -----------------------------------------------------------------------------
    def add_event(self, project: str, actor: str, event_type: str, event_desc: str,
                  service_name: str | None = None) -> None:
        with self._tx() as db:
            Tx(db).add_event(project, actor, event_type, event_desc, service_name=service_name,
                             keep=self.events_keep)

    def list_events(self, project: str, limit: int = 100, service_name: str | None = None) -> list[EventRow]:
        """The project's newest events first."""
        with self._lock:
            if service_name is None:
                rows = self._db.execute(
                    "SELECT id, project, time, actor, event_type, service_name, event_desc FROM events "
                    "WHERE project=? ORDER BY id DESC LIMIT ?", (project, limit)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, project, time, actor, event_type, service_name, event_desc FROM events "
                    "WHERE project=? AND service_name=? ORDER BY id DESC LIMIT ?",
                    (project, service_name, limit)).fetchall()
        return [EventRow(*r) for r in rows]

    # projects ---------------------------------------------------------------------------
    def add_project(self, project: ProjectRecord) -> bool:
        """Insert a project; False if one of that name exists."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM projects WHERE name=?", (project.name,)).fetchone():
                return False
            db.execute("INSERT INTO projects(name, doc) VALUES (?, ?)", (project.name, project.model_dump_json()))
        return True

    def get_project(self, name: str) -> ProjectRecord | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM projects WHERE name=?", (name,)).fetchone()
        return ProjectRecord.model_validate_json(row[0]) if row else None

    def list_projects(self) -> list[ProjectRecord]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM projects ORDER BY name").fetchall()
        return [ProjectRecord.model_validate_json(r[0]) for r in rows]

    # services ---------------------------------------------------------------------------
    def add_service(self, svc: ServiceRecord) -> bool:
        """Insert a service; False if the (project, name) is taken (even by one being deleted)."""
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM services WHERE project=? AND name=?", (svc.project, svc.name)
            ).fetchone():
                return False
            db.execute(
                "INSERT INTO services(project, name, doc) VALUES (?, ?, ?)",
                (svc.project, svc.name, svc.model_dump_json()),
            )
        return True

    def get_service(self, project: str, name: str) -> ServiceRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM services WHERE project=? AND name=?", (project, name)
            ).fetchone()
        return ServiceRecord.model_validate_json(row[0]) if row else None

    def list_services(self, project: str | None = None) -> list[ServiceRecord]:
        with self._lock:
            if project is None:
                rows = self._db.execute("SELECT doc FROM services ORDER BY project, name").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT doc FROM services WHERE project=? ORDER BY name", (project,)
                ).fetchall()
        return [ServiceRecord.model_validate_json(r[0]) for r in rows]

    def update_service(
        self, project: str, name: str, change: Callable[[ServiceRecord], ServiceRecord | None]
    ) -> ServiceRecord | None:
        """Apply ``change`` to the stored service atomically; returns the new record.

        ``change`` may raise to abort (nothing is written) or return None to write nothing.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT doc FROM services WHERE project=? AND name=?", (project, name)
            ).fetchone()
            if row is None:
                return None
            new = change(ServiceRecord.model_validate_json(row[0]))
            if new is None:
                return ServiceRecord.model_validate_json(row[0])
            db.execute(
                "UPDATE services SET doc=? WHERE project=? AND name=?", (new.model_dump_json(), project, name)
            )
            return new

    def delete_service(self, project: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM services WHERE project=? AND name=?", (project, name))

    # integrations -----------------------------------------------------------------------
    def list_integrations(self, project: str) -> list[IntegrationRecord]:
        with self._lock:
            return Tx(self._db).integrations(project)

    def get_integration(self, project: str, integration_id: str) -> IntegrationRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM integrations WHERE project=? AND integration_id=?", (project, integration_id)
            ).fetchone()
        return IntegrationRecord.model_validate_json(row[0]) if row else None

    # operations -------------------------------------------------------------------------
    def get_operation(self, operation_id: str) -> OperationRecord | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM operations WHERE operation_id=?", (operation_id,)).fetchone()
        return OperationRecord.model_validate_json(row[0]) if row else None

    def list_operations(self, project: str, pair: str | None = None) -> list[OperationRecord]:
        with self._lock:
            if pair is None:
                rows = self._db.execute(
                    "SELECT doc FROM operations WHERE project=? ORDER BY create_time, rowid", (project,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT doc FROM operations WHERE project=? AND pair=? ORDER BY create_time, rowid",
                    (project, pair),
                ).fetchall()
        return [OperationRecord.model_validate_json(r[0]) for r in rows]

    def running_operations(self) -> list[OperationRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM operations WHERE state='running' ORDER BY create_time, rowid"
            ).fetchall()
        return [OperationRecord.model_validate_json(r[0]) for r in rows]

    def put_operation(self, op: OperationRecord) -> bool:
        with self._tx() as db:
            return Tx(db).put_operation(op)
