"""Request bodies, read with bounds: a hostile body is a 4xx, never a 500 or a huge answer.

- at most :data:`MAX_BODY_BYTES` bytes: larger is a 413, told by ``Content-Length`` before any
  byte is read, or counted while reading a chunked body (:class:`BodyLimitMiddleware` does this
  for every route of the app, console included; :func:`read_body` again for whoever calls it);
- JSON nested at most :data:`MAX_JSON_DEPTH` deep: checked by a scan without recursion *before*
  ``json.loads``, which recurses and raises RecursionError (a 500) on ``[[[[...`` 100,000 deep.

The bodies real clients send (avn, Terraform, the console) are a few KB and 4 levels deep.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgcrdr.controlplane.errors import Refused, clip

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64

# The only characters that matter to nesting: quotes and backslashes (strings), brackets.
_SPECIAL = re.compile(r'["\\\[\]{}]')


def too_large() -> Refused:
    return Refused(413, f"Request body too large: at most {MAX_BODY_BYTES} bytes")


def json_too_deep(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` opens more than ``max_depth`` arrays or objects inside one another.

    One pass over the quotes, backslashes and brackets with a counter: no recursion, linear time
    (a regular expression for whole strings backtracks quadratically on ``"\\"\\"...``). Brackets
    inside strings do not count. On malformed JSON the answer may be wrong either way; json.loads
    refuses such a body anyway."""
    depth, in_string, skip = 0, False, -1
    for m in _SPECIAL.finditer(text):
        i = m.start()
        if i == skip:  # the character after a backslash in a string
            continue
        c = text[i]
        if in_string:
            if c == "\\":
                skip = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif c in "]}":
            depth -= 1
    return False


def _declared_length(headers: Any) -> int | None:
    value = headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def read_body(request: Request) -> bytes:
    """The request body, at most :data:`MAX_BODY_BYTES` (else :class:`Refused` 413)."""
    declared = _declared_length(request.headers)
    if declared is not None and declared > MAX_BODY_BYTES:
        raise too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (a missing body is an empty object), read with bounds."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        text = raw.decode(json.detect_encoding(raw))
    except (UnicodeDecodeError, LookupError):
        raise Refused(400, "Malformed JSON in request body: not UTF-8") from None
    if json_too_deep(text):
        raise Refused(400, f"JSON nested too deep: at most {MAX_JSON_DEPTH} levels of arrays and objects")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Refused(400, f"Malformed JSON in request body: {clip(exc)}") from None
    if not isinstance(data, dict):
        raise Refused(400, "Request body must be a JSON object")
    return data


class BodyLimitMiddleware:
    """Bounds every request body of the app, whichever route reads it (or none does)."""

    def __init__(self, app: ASGIApp, error_body: Any):
        self.app = app
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = _declared_length(headers)
        if declared is not None and declared > MAX_BODY_BYTES:
            await self._refuse(send)
            return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise too_large()  # inside the route: answered as a 413 by the Refused handler
            return message

        await self.app(scope, bounded_receive, send)

    async def _refuse(self, send: Send) -> None:
        exc = too_large()
        payload = json.dumps(self.error_body(exc.status, exc.message)).encode()
        await send({"type": "http.response.start", "status": exc.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
