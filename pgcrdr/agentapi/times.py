"""Times in the contract: RFC 3339 text, read into aware datetimes (UTC when no offset is given)."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_time(text: str) -> datetime:
    """``2026-11-30T11:30:00Z`` (or with an offset, fractions, a space for ``T``) as an aware
    datetime; ValueError when it is not such a time."""
    t = datetime.fromisoformat(text.strip())
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC, to the microsecond when there are any."""
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")
