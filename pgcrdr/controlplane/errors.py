"""Typed refusals: a user's mistake, with a message that says what to do instead."""

from __future__ import annotations

# A message quotes at most this many characters of a value the user sent: a 5 MB value must not
# come back in a 5 MB error (twice: ``message`` and ``errors[0].message``).
ECHO_LIMIT = 100


def clip(text: object, limit: int = ECHO_LIMIT) -> str:
    """``str(text)`` cut to its first ``limit`` characters, saying how long it was."""
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"


def clip_repr(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut like :func:`clip`: for messages that quote a value with ``!r``."""
    return clip(repr(value), limit)


class Refused(Exception):
    """A request that cannot be carried out. ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found_service(name: str) -> Refused:
    # Terraform retries a 404 on POST whose body matches "Service \S+ does not exist"; the real
    # Aiven wording is kept on purpose.
    return Refused(404, f"Service {clip(name)} does not exist")


def not_found_project(name: str) -> Refused:
    return Refused(404, f"Project {clip(name)} does not exist")
