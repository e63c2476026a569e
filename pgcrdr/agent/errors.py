"""How the agent's operations refuse; the API maps each to its status (``pgcrdr.agent.app``)."""

from __future__ import annotations


class NotFound(Exception):
    """No such cluster or node (404)."""


class Conflict(Exception):
    """Refused as the cluster is now (409); nothing was changed."""


class Timeout(Exception):
    """A bounded wait gave up (504); the message says what it waited for."""
