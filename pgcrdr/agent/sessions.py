"""Client sessions of a cluster's leader that are active or hold a transaction open, and the
sentence that names them when they hold up something (a PgBouncer PAUSE past its deadline, a
demote waiting for a fast shutdown)."""

from __future__ import annotations

import psycopg

from pgcrdr.agent.models import SessionInfo, SessionsInfo

QUERY_CHARS = 200

# Our own connection is left out; so are idle sessions with no transaction (they hold nothing).
SESSIONS_SQL = f"""
SELECT pid, usename, datname, application_name, host(client_addr), state,
       extract(epoch FROM now() - xact_start)::float8,
       extract(epoch FROM now() - query_start)::float8,
       wait_event_type, wait_event, left(query, {QUERY_CHARS})
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
   AND pid <> pg_backend_pid()
   AND (xact_start IS NOT NULL OR state = 'active')
 ORDER BY xact_start ASC NULLS LAST, pid
"""


def read_sessions(conn: psycopg.Connection, node: str) -> SessionsInfo:
    in_recovery = bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]
    sessions = [
        SessionInfo(pid=r[0], usename=r[1], datname=r[2], application_name=r[3] or None, client_addr=r[4],
                    state=r[5], xact_age_s=_age(r[6]), query_age_s=_age(r[7]), wait_event_type=r[8],
                    wait_event=r[9], query=r[10])
        for r in conn.execute(SESSIONS_SQL).fetchall()
    ]
    return SessionsInfo(node=node, in_recovery=in_recovery, sessions=sort_sessions(sessions))


def _age(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, float(value)), 3)


def sort_sessions(sessions: list[SessionInfo]) -> list[SessionInfo]:
    """Oldest transaction first; sessions without a transaction last, by pid. Pure."""
    return sorted(sessions, key=lambda s: (s.xact_age_s is None, -(s.xact_age_s or 0.0), s.pid))


def describe_session(s: SessionInfo) -> str:
    """``pid 1234 (user avnadmin, application psql, transaction open 12.3 s)``. Pure."""
    parts = []
    if s.usename:
        parts.append(f"user {s.usename}")
    if s.application_name:
        parts.append(f"application {s.application_name}")
    if s.xact_age_s is not None:
        parts.append(f"transaction open {s.xact_age_s:.1f} s")
    elif s.query_age_s is not None:
        parts.append(f"query running {s.query_age_s:.1f} s")
    return f"pid {s.pid}" + (f" ({', '.join(parts)})" if parts else "")


def describe_sessions(info: SessionsInfo, limit: int = 3) -> str:
    """Which sessions held the writer up, oldest transaction first, at most ``limit`` named:
    ``held by pid 1234 (user avnadmin, application psql, transaction open 12.3 s) and 2 more``.
    Pure."""
    if not info.sessions:
        return "no session held a transaction open"
    named = [describe_session(s) for s in info.sessions[:max(1, limit)]]
    rest = len(info.sessions) - len(named)
    if rest:
        named.append(f"{rest} more")
    text = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return "held by " + text
