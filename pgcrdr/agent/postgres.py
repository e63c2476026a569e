"""SQL the agent runs on a cluster's leader: users, databases, progress of replica builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from pgcrdr.agentapi.models import ClusterSpec, LsnInfo
from pgcrdr.agent.patroni import SUPERUSER


def _connect(spec: ClusterSpec, port: int, host: str = "127.0.0.1", dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(
        host=host, port=port, user=SUPERUSER, password=spec.superuser_password, dbname=dbname,
        sslmode="require", connect_timeout=3, autocommit=True,
    )


def ensure_users_and_databases(spec: ClusterSpec, port: int, host: str = "127.0.0.1") -> list[str]:
    """Create or update the spec's roles and create its databases on the writer. Idempotent.
    Returns what was done, one sentence per change."""
    done: list[str] = []
    owner = next((u.username for u in spec.users if u.kind == "primary"), SUPERUSER)
    with _connect(spec, port, host) as conn:
        for user in spec.users:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user.username,)).fetchone()
            attrs = sql.SQL("LOGIN CREATEDB CREATEROLE" if user.kind == "primary" else "LOGIN")
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            conn.execute(
                sql.SQL("{} {} {} PASSWORD {}").format(
                    verb, sql.Identifier(user.username), attrs, sql.Literal(user.password)
                )
            )
            done.append(f"{'updated' if exists else 'created'} role {user.username}")
        for db in spec.databases:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                continue
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
            done.append(f"created database {db} owned by {owner}")
    return done


def basebackup_progress(spec: ClusterSpec, port: int, host: str = "127.0.0.1") -> list[tuple[int, int | None]]:
    """(bytes streamed, bytes total) of every base backup the writer is serving now."""
    with _connect(spec, port, host) as conn:
        rows = conn.execute(
            "SELECT backup_streamed, backup_total FROM pg_stat_progress_basebackup"
        ).fetchall()
    return [(int(r[0] or 0), int(r[1]) if r[1] is not None else None) for r in rows]


def tail_lines(path: Path, n: int = 400, max_bytes: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in data.splitlines() if line.strip()][-n:]


_PG_FATAL = ("FATAL:", "PANIC:")
_OTHER_ERRORS = (" ERROR:", " ERROR ", "CRITICAL", "Error:", "Exception:")


def last_error_line(paths: list[Path]) -> str | None:
    """The most telling recent error of the given logs: a PostgreSQL FATAL/PANIC first (it says
    why the server would not start), else an error line or an exception, else the last line."""
    tails = [tail_lines(p) for p in paths]
    for keys in (_PG_FATAL, _OTHER_ERRORS):
        for lines in tails:
            for line in reversed(lines):
                if any(k in line for k in keys):
                    return line.strip()[:500]
    for lines in tails:
        if lines:
            return lines[-1].strip()[:500]
    return None


def endpoint_target(spec: ClusterSpec, port: int, host: str = "127.0.0.1") -> tuple[int, bool]:
    """(PostgreSQL port, in recovery) of the server an endpoint routes a new connection to."""
    with _connect(spec, port, host) as conn:
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    if row is None:
        raise RuntimeError("no answer")
    return int(row[0]), bool(row[1])


# --- CRDR: WAL positions and promotion ---------------------------------------------------------

_LSN_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_last_xact_replay_timestamp(),
       CASE WHEN pg_is_in_recovery() THEN
         CASE WHEN pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()
              THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 ELSE 0.0 END
       END,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END
"""


def connect_superuser(spec: ClusterSpec, port: int, host: str = "127.0.0.1",
                      connect_timeout: int = 3, socket_dir: Path | None = None) -> psycopg.Connection:
    """A superuser connection: over TCP with TLS to ``host``, or, with ``socket_dir``, over the
    node's Unix socket (the agent runs on the node's host; no TLS handshake: 10-50 ms less per
    connection on a busy machine, which the LSN checks and the promote of a move make)."""
    if socket_dir is not None:
        return psycopg.connect(
            host=str(socket_dir), port=port, user=SUPERUSER, password=spec.superuser_password, dbname="postgres",
            sslmode="disable", connect_timeout=connect_timeout, autocommit=True,
        )
    return psycopg.connect(
        host=host, port=port, user=SUPERUSER, password=spec.superuser_password, dbname="postgres",
        sslmode="require", connect_timeout=connect_timeout, autocommit=True,
    )


def one_value(conn: psycopg.Connection, query: LiteralString, params: tuple[object, ...] | None = None) -> Any:
    """The first column of the row ``query`` returns (one that returns no row raises)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query}")
    return row[0]


def lsn_info(conn: psycopg.Connection, node: str) -> LsnInfo:
    row = conn.execute(_LSN_SQL).fetchone()
    if row is None:
        raise RuntimeError("no answer")
    in_recovery, current, receive, replay, replay_ts, lag, timeline = row
    return LsnInfo(
        node=node, in_recovery=bool(in_recovery), timeline=int(timeline) if timeline is not None else None,
        current_lsn=current, receive_lsn=receive if in_recovery else None, replay_lsn=replay if in_recovery else None,
        replay_time=replay_ts.isoformat() if in_recovery and replay_ts is not None else None,
        lag_seconds=max(0.0, float(lag)) if lag is not None else None,
    )


def timeline_switch_point(conn: psycopg.Connection, timeline: int) -> str | None:
    """Where ``timeline`` forked from its parent, from its history file (None for timeline 1)."""
    if timeline <= 1:
        return None
    try:
        text = one_value(conn, "SELECT pg_read_file(%s)", (f"pg_wal/{timeline:08X}.history",))
    except psycopg.Error:
        return None
    lines = [ln.split() for ln in str(text).splitlines() if ln.strip() and not ln.startswith("#")]
    return lines[-1][1] if lines and len(lines[-1]) >= 2 else None
