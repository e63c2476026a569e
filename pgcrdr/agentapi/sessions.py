"""The sentence that names a leader's sessions when they hold up something (a PgBouncer PAUSE
past its deadline, a demote waiting for a fast shutdown). Pure: it renders ``SessionsInfo``."""

from __future__ import annotations

from pgcrdr.agentapi.models import SessionInfo, SessionsInfo


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
