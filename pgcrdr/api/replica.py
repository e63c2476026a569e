"""Which control-plane replica answered, and which one leads: two headers on every answer
(``X-Pgcrdr-Replica``, ``X-Pgcrdr-Leader``), for clients, ``pgcrdr status`` and the console."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = "x-pgcrdr-replica"
LEADER_HEADER = "x-pgcrdr-leader"


class ReplicaHeadersMiddleware:
    def __init__(self, app: ASGIApp, replica: str, leader: Callable[[], str]):
        self.app = app
        self.replica = replica
        self.leader = leader  # reads the election's memory: no store call per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (REPLICA_HEADER.encode(), self.replica.encode("latin-1", "replace")),
                                      (LEADER_HEADER.encode(), self.leader().encode("latin-1", "replace"))]
            await send(message)

        await self.app(scope, receive, with_headers)
