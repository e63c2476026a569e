"""Client sessions of a cluster's leader that are active or hold a transaction open, read from
``pg_stat_activity`` (``pgcrdr.agentapi.sessions`` words them)."""

from __future__ import annotations

import psycopg

from pgcrdr.agent.postgres import one_value
from pgcrdr.agentapi.models import SessionInfo, SessionsInfo

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
    in_recovery = bool(one_value(conn, "SELECT pg_is_in_recovery()"))
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
