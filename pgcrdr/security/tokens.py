"""Random tokens and passwords that are safe to paste anywhere: URL-safe, and never starting with
``-`` (a command line would take such a token for an option: ``avn --auth-token -x...``)."""

from __future__ import annotations

import secrets


def new_token(nbytes: int = 32) -> str:
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token
