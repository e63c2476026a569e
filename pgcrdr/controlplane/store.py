"""Control-plane state in SQLite (WAL mode): projects, services, API tokens, settings.

Every public method is one transaction. Services are stored as JSON documents keyed by
(project, name); callers read-modify-write them with :meth:`Store.update_service`, which holds
the store lock for the whole cycle so the API and the reconciler never overwrite each other.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pgcrdr.controlplane.records import IntegrationRecord, OperationRecord, ProjectRecord, ServiceRecord

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
"""


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
        user's request) never becomes running again: such a write is dropped (False)."""
        if op.state == "running":
            row = self.db.execute("SELECT state FROM operations WHERE operation_id=?", (op.operation_id,)).fetchone()
            if row is not None and row[0] != "running":
                return False
        self.db.execute(
            "INSERT OR REPLACE INTO operations(operation_id, project, pair, state, create_time, doc) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (op.operation_id, op.project, op.pair, op.state, op.create_time, op.model_dump_json()),
        )
        return True


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
        self._lock = threading.RLock()

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
    def add_token(self, token: str, description: str, create_time: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens(token_hash, description, create_time) VALUES (?, ?, ?)",
                (hash_token(token), description, create_time),
            )

    def token_valid(self, token: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM tokens WHERE token_hash=?", (hash_token(token),)
            ).fetchone()
        return row is not None

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
