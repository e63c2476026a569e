"""The store in one SQLite file (WAL mode): the embedded default, for a control plane on one host.

Transactions are serialized by a lock and ``BEGIN IMMEDIATE``: a transaction function runs once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pgcrdr.controlplane.records import (
    DrillRecord,
    IntegrationRecord,
    OperationRecord,
    ProjectRecord,
    ServiceRecord,
)
from pgcrdr.controlplane.store.base import (
    EVENTS_KEPT_PER_PROJECT,
    EventRow,
    Store,
    T,
    TokenRow,
    Tx,
    prune_every,
    rfc3339,
)

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
CREATE TABLE IF NOT EXISTS drills (
    drill_id TEXT PRIMARY KEY, project TEXT NOT NULL, pair TEXT NOT NULL, create_time TEXT NOT NULL,
    doc TEXT NOT NULL);
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
TOKEN_FIELDS = ("token_hash, token_prefix, description, create_time, max_age_seconds, extend_when_used, expiry, "
                "last_used, created_manually")
EVENT_FIELDS = "id, project, time, actor, event_type, service_name, event_desc"


def _token_row(row: tuple) -> TokenRow:
    return TokenRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], bool(row[8]))


class SQLiteTx(Tx):
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def _docs(self, sql: str, args: tuple = ()) -> list[str]:
        return [r[0] for r in self.db.execute(sql, args).fetchall()]

    def _doc(self, sql: str, args: tuple) -> str | None:
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row else None

    # services
    def service(self, project: str, name: str) -> ServiceRecord | None:
        doc = self._doc("SELECT doc FROM services WHERE project=? AND name=?", (project, name))
        return ServiceRecord.model_validate_json(doc) if doc else None

    def services(self, project: str | None = None) -> list[ServiceRecord]:
        if project is None:
            docs = self._docs("SELECT doc FROM services ORDER BY project, name")
        else:
            docs = self._docs("SELECT doc FROM services WHERE project=? ORDER BY name", (project,))
        return [ServiceRecord.model_validate_json(d) for d in docs]

    def put_service(self, svc: ServiceRecord) -> None:
        self.db.execute("INSERT OR REPLACE INTO services(project, name, doc) VALUES (?, ?, ?)",
                        (svc.project, svc.name, svc.model_dump_json()))

    def delete_service(self, project: str, name: str) -> None:
        self.db.execute("DELETE FROM services WHERE project=? AND name=?", (project, name))

    # projects
    def project(self, name: str) -> ProjectRecord | None:
        doc = self._doc("SELECT doc FROM projects WHERE name=?", (name,))
        return ProjectRecord.model_validate_json(doc) if doc else None

    def projects(self) -> list[ProjectRecord]:
        return [ProjectRecord.model_validate_json(d) for d in self._docs("SELECT doc FROM projects ORDER BY name")]

    def put_project(self, project: ProjectRecord) -> None:
        self.db.execute("INSERT OR REPLACE INTO projects(name, doc) VALUES (?, ?)",
                        (project.name, project.model_dump_json()))

    # integrations
    def integrations(self, project: str) -> list[IntegrationRecord]:
        docs = self._docs("SELECT doc FROM integrations WHERE project=? ORDER BY rowid", (project,))
        return [IntegrationRecord.model_validate_json(d) for d in docs]

    def put_integration(self, rec: IntegrationRecord) -> None:
        self.db.execute(
            "INSERT INTO integrations(integration_id, project, doc) VALUES (?, ?, ?) "
            "ON CONFLICT(integration_id) DO UPDATE SET project=excluded.project, doc=excluded.doc",
            (rec.integration_id, rec.project, rec.model_dump_json()))

    def delete_integration(self, project: str, integration_id: str) -> None:
        self.db.execute("DELETE FROM integrations WHERE project=? AND integration_id=?", (project, integration_id))

    # operations
    def operation(self, operation_id: str) -> OperationRecord | None:
        doc = self._doc("SELECT doc FROM operations WHERE operation_id=?", (operation_id,))
        return OperationRecord.model_validate_json(doc) if doc else None

    def operations(self, project: str, pair: str | None = None) -> list[OperationRecord]:
        if pair is None:
            docs = self._docs("SELECT doc FROM operations WHERE project=? ORDER BY create_time, rowid", (project,))
        else:
            docs = self._docs("SELECT doc FROM operations WHERE project=? AND pair=? ORDER BY create_time, rowid",
                              (project, pair))
        return [OperationRecord.model_validate_json(d) for d in docs]

    def running_operation(self, project: str, pair: str) -> OperationRecord | None:
        doc = self._doc("SELECT doc FROM operations WHERE project=? AND pair=? AND state='running'", (project, pair))
        return OperationRecord.model_validate_json(doc) if doc else None

    def running_operations(self) -> list[OperationRecord]:
        docs = self._docs("SELECT doc FROM operations WHERE state='running' ORDER BY create_time, rowid")
        return [OperationRecord.model_validate_json(d) for d in docs]

    def write_operation(self, op: OperationRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO operations(operation_id, project, pair, state, create_time, doc) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (op.operation_id, op.project, op.pair, op.state, op.create_time, op.model_dump_json()),
        )

    # events
    # drills
    def drills(self, project: str, pair: str) -> list[DrillRecord]:
        docs = self._docs("SELECT doc FROM drills WHERE project=? AND pair=? ORDER BY create_time, rowid",
                          (project, pair))
        return [DrillRecord.model_validate_json(d) for d in docs]

    def put_drill(self, rec: DrillRecord) -> None:
        self.db.execute(
            "INSERT INTO drills(drill_id, project, pair, create_time, doc) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(drill_id) DO UPDATE SET doc=excluded.doc",
            (rec.drill_id, rec.project, rec.pair, rec.create_time, rec.model_dump_json()))

    def add_event(self, project: str, actor: str, event_type: str, event_desc: str,
                  service_name: str | None = None, when: str | None = None,
                  keep: int = EVENTS_KEPT_PER_PROJECT) -> None:
        cur = self.db.execute(
            "INSERT INTO events(project, time, actor, event_type, service_name, event_desc) VALUES (?, ?, ?, ?, ?, ?)",
            (project, when or rfc3339(time.time()), actor, event_type, service_name, event_desc),
        )
        # Ids are shared by all projects, so the project's own newest ``keep`` are counted.
        if (cur.lastrowid or 0) % prune_every(keep) == 0:
            self.db.execute(
                "DELETE FROM events WHERE project=? AND id <= "
                "(SELECT id FROM events WHERE project=? ORDER BY id DESC LIMIT 1 OFFSET ?)", (project, project, keep))

    def events(self, project: str, limit: int, service_name: str | None = None) -> list[EventRow]:
        if service_name is None:
            rows = self.db.execute(f"SELECT {EVENT_FIELDS} FROM events WHERE project=? ORDER BY id DESC LIMIT ?",
                                   (project, limit)).fetchall()
        else:
            rows = self.db.execute(f"SELECT {EVENT_FIELDS} FROM events WHERE project=? AND service_name=? "
                                   "ORDER BY id DESC LIMIT ?", (project, service_name, limit)).fetchall()
        return [EventRow(*r) for r in rows]

    # tokens
    def token(self, token_hash: str) -> TokenRow | None:
        row = self.db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_hash=?", (token_hash,)).fetchone()
        return _token_row(row) if row else None

    def tokens(self) -> list[TokenRow]:
        rows = self.db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens ORDER BY create_time, rowid").fetchall()
        return [_token_row(r) for r in rows]

    def tokens_with_prefix(self, prefix: str) -> list[TokenRow]:
        rows = self.db.execute(f"SELECT {TOKEN_FIELDS} FROM tokens WHERE token_prefix=? ORDER BY create_time, rowid",
                               (prefix,)).fetchall()
        return [_token_row(r) for r in rows]

    def put_token(self, row: TokenRow) -> None:
        # An upsert keeps the row's rowid, hence its place among tokens made in the same second.
        self.db.execute(
            f"INSERT INTO tokens({TOKEN_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(token_hash) DO UPDATE "
            "SET token_prefix=excluded.token_prefix, description=excluded.description, "
            "create_time=excluded.create_time, max_age_seconds=excluded.max_age_seconds, "
            "extend_when_used=excluded.extend_when_used, expiry=excluded.expiry, last_used=excluded.last_used, "
            "created_manually=excluded.created_manually",
            (row.token_hash, row.token_prefix, row.description, row.create_time, row.max_age_seconds,
             int(row.extend_when_used), row.expiry, row.last_used, int(row.created_manually)),
        )

    def delete_token(self, token_hash: str) -> None:
        self.db.execute("DELETE FROM tokens WHERE token_hash=?", (token_hash,))

    # meta
    def meta(self, key: str) -> str | None:
        return self._doc("SELECT value FROM meta WHERE key=?", (key,))

    def put_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))


class SQLiteStore(Store):
    def __init__(self, path: Path):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate_tokens()
        self._lock = threading.RLock()

    def _migrate_tokens(self) -> None:
        have = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)").fetchall()}
        for name, decl in TOKEN_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE tokens ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS tokens_by_prefix ON tokens(token_prefix)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def transaction(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(SQLiteTx(self._db))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def read(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            return fn(SQLiteTx(self._db))
