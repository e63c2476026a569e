"""Access tokens, as Aiven has them (``avn user access-token create|list|update|revoke``).

- ``POST /v1/access_token`` ``{"description", "max_age_seconds"?, "extend_when_used"?}``: the
  only answer that ever carries the token (``full_token``); the store keeps its SHA-256 hash and
  its first characters (``token_prefix``), which identify it afterwards.
- ``GET /v1/access_token``: ``{"tokens": [...]}``, every valid token, the one in use included
  (``currently_active``), never a secret.
- ``PUT /v1/access_token/{prefix}``: a new description.
- ``DELETE /v1/access_token/{prefix or full token}``: revoked; its next request gets 403.

A token with ``max_age_seconds`` expires that long after its creation, or after its last use
with ``extend_when_used``; an expired token gets 403 like a revoked one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from pgcrdr.api import schemas as S
from pgcrdr.api.bodies import json_body
from pgcrdr.controlplane.errors import Refused, clip
from pgcrdr.controlplane.store import TOKEN_PREFIX_CHARS, Store, TokenRow, hash_token, rfc3339
from pgcrdr.security.tokens import new_token

MAX_AGE_LIMIT_S = S.TOKEN_MAX_AGE_LIMIT_S
MAX_DESCRIPTION_CHARS = S.TOKEN_DESCRIPTION_MAX_CHARS


def token_json(t: TokenRow, current_hash: str | None) -> dict:
    """A token as Aiven lists it: never the token, only its prefix."""
    return {
        "token_prefix": t.token_prefix,
        "description": t.description,
        "create_time": t.create_time,
        "created_manually": t.created_manually,
        "currently_active": t.token_hash == current_hash,
        "expiry_time": rfc3339(t.expiry),
        "max_age_seconds": t.max_age_seconds,
        "extend_when_used": t.extend_when_used,
        "last_used_time": rfc3339(t.last_used),
        "last_ip": None,
        "last_user_agent": None,
        "last_user_agent_human_readable": None,
        "scopes": None,
    }


def parse_create(body: dict) -> tuple[str, int | None, bool]:
    """Validate a create body (pure): (description, max_age_seconds, extend_when_used)."""
    description = body.get("description")
    if not isinstance(description, str) or not re.search(S.NOT_BLANK, description):
        raise Refused(400, "description is required: say what the token is for")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise Refused(400, f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
    max_age = body.get("max_age_seconds")
    if isinstance(max_age, float) and max_age.is_integer():  # 3600.0 is a JSON integer too
        max_age = int(max_age)
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)
                                or not 1 <= max_age <= MAX_AGE_LIMIT_S):
        raise Refused(400, f"max_age_seconds must be an integer from 1 to {MAX_AGE_LIMIT_S}, or null "
                           f"(never expires); got {clip(repr(max_age))}")
    extend = body.get("extend_when_used", False)
    if extend is None:
        extend = False
    if not isinstance(extend, bool):
        raise Refused(400, "extend_when_used must be true or false")
    if extend and max_age is None:
        raise Refused(400, "extend_when_used needs max_age_seconds: a token that never expires has nothing to extend")
    return description, max_age, extend


def tokens_router(store: Store, auth: Callable[..., str], now_rfc3339: Callable[[], str]) -> APIRouter:
    router = APIRouter()
    Auth = Depends(auth)

    def _one(token_or_prefix: str) -> TokenRow:
        found = store.find_token(token_or_prefix)
        if not found:
            raise Refused(404, f"Access token {clip(token_or_prefix[:TOKEN_PREFIX_CHARS])}... does not exist")
        if len(found) > 1:
            raise Refused(409, f"{len(found)} access tokens start with {clip(token_or_prefix)}: "
                               "give the full token to revoke one of them")
        return found[0]

    prefix_param = Path(description="The token's prefix (token_prefix of the list) or the full token")

    @router.post("/v1/access_token", responses=S.ok(S.AccessTokenCreateResponse, 400, 413),
                 openapi_extra=S.body_spec(S.AccessTokenCreateRequest))
    async def create_token(request: Request, token: str = Auth) -> dict[str, Any]:
        description, max_age, extend = parse_create(S.check_body(S.AccessTokenCreateRequest, await json_body(request)))
        full = new_token(32)
        row = await run_in_threadpool(store.add_token, full, description, now_rfc3339(), max_age_seconds=max_age,
                                      extend_when_used=extend, created_manually=True)
        return {**token_json(row, hash_token(token)), "full_token": full}

    @router.get("/v1/access_token", responses=S.ok(S.AccessTokenListResponse))
    def list_tokens(token: str = Auth) -> dict:  # plain def: runs in the threadpool
        current = hash_token(token)
        return {"tokens": [token_json(t, current) for t in store.list_tokens()]}

    def _update(token_prefix: str, description: str) -> TokenRow:
        row = _one(token_prefix)
        updated = store.update_token_description(row.token_hash, description)
        if updated is None:  # revoked meanwhile
            raise Refused(404, f"Access token {clip(token_prefix[:TOKEN_PREFIX_CHARS])}... does not exist")
        return updated

    @router.put("/v1/access_token/{token_prefix}", responses=S.ok(S.AccessToken, 400, 404, 409, 413),
                openapi_extra=S.body_spec(S.AccessTokenUpdateRequest))
    async def update_token(request: Request, token_prefix: str = prefix_param, token: str = Auth) -> dict[str, Any]:
        body = S.check_body(S.AccessTokenUpdateRequest, await json_body(request))
        description = body.get("description")
        if not isinstance(description, str) or not re.search(S.NOT_BLANK, description):
            raise Refused(400, "description is required")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise Refused(400, f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
        return token_json(await run_in_threadpool(_update, token_prefix, description), hash_token(token))

    @router.delete("/v1/access_token/{token_prefix}", responses=S.ok(S.Message, 404, 409))
    def revoke_token(token_prefix: str = prefix_param, _: str = Auth) -> dict:  # plain def: in the threadpool
        matched = store.revoke_token(token_prefix)
        if not matched:
            raise Refused(404, f"Access token {clip(token_prefix[:TOKEN_PREFIX_CHARS])}... does not exist")
        if len(matched) > 1:
            raise Refused(409, f"{len(matched)} access tokens start with {clip(token_prefix)}: "
                               "give the full token to revoke one of them")
        prefix = matched[0].token_prefix or token_prefix[:TOKEN_PREFIX_CHARS]  # a token older than prefixes
        return {"message": f"Access token {prefix}... revoked"}

    return router
