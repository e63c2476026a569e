"""Access tokens as ``avn user access-token create|list|revoke`` use them: expiry, revocation
that takes effect at once, lists without secrets, hashed storage (on both stores), and the
in-place migration of an old SQLite database."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import pytest

from pgcrdr.controlplane.store import SQLiteStore, hash_token
from tests.unit.stores import every_store_backend, raw_contents  # noqa: F401  (runs each test on both stores)


def create(api, **body):
    r = api.post("/v1/access_token", json={"description": "ci", **body})
    assert r.status_code == 200, r.text
    return r.json()


def as_token(api, token, path="/v1/project"):
    return api.get(path, headers={"Authorization": f"aivenv1 {token}"})


def test_create_then_use_list_without_secrets_and_revoke_is_403_at_once(api):
    made = create(api, description="deploy bot", max_age_seconds=3600)
    full = made["full_token"]
    assert made["token_prefix"] == full[:10] and made["max_age_seconds"] == 3600 and made["expiry_time"]
    assert as_token(api, full).status_code == 200

    listed = as_token(api, full, "/v1/access_token").json()["tokens"]
    assert api.creds.token not in str(listed) and full not in str(listed)
    assert all("full_token" not in t for t in listed)
    mine = next(t for t in listed if t["description"] == "deploy bot")
    assert mine["currently_active"] is True and mine["created_manually"] is True and mine["last_used_time"]
    other = next(t for t in listed if t["description"] == "initial token")
    assert other["currently_active"] is False

    r = api.delete(f"/v1/access_token/{made['token_prefix']}")
    assert r.status_code == 200 and "revoked" in r.json()["message"]
    r = as_token(api, full)
    assert r.status_code == 403 and r.json()["message"] == "Invalid or expired API token"
    assert "deploy bot" not in str(api.get("/v1/access_token").json())


def test_a_token_expires_after_its_max_age(api):
    full = create(api, max_age_seconds=1)["full_token"]
    assert as_token(api, full).status_code == 200
    time.sleep(1.1)
    assert as_token(api, full).status_code == 403
    assert full[:10] not in str(api.get("/v1/access_token").json()), "expired tokens are not listed"


def test_extend_when_used_moves_the_expiry_with_each_use(store):
    store.add_token("tok-extended-aaaaaaaa", "e", "2026-01-01T00:00:00Z", max_age_seconds=100,
                    extend_when_used=True, now=1000)
    store.add_token("tok-fixed-bbbbbbbbbbb", "f", "2026-01-01T00:00:00Z", max_age_seconds=100, now=1000)
    assert store.token_valid("tok-extended-aaaaaaaa", now=1050) and store.token_valid("tok-fixed-bbbbbbbbbbb", now=1050)
    assert store.token_valid("tok-extended-aaaaaaaa", now=1120)
    assert not store.token_valid("tok-fixed-bbbbbbbbbbb", now=1120)
    assert not store.token_valid("tok-extended-aaaaaaaa", now=1300)


def test_revoke_by_full_token_and_logout_style(api):
    full = create(api)["full_token"]
    assert api.delete(f"/v1/access_token/{full}").status_code == 200
    assert as_token(api, full).status_code == 403
    assert api.delete(f"/v1/access_token/{full}").status_code == 404
    assert api.delete("/v1/access_token/nosuchpref").status_code == 404


def test_the_token_in_use_can_revoke_itself(api):
    full = create(api)["full_token"]
    r = api.delete(f"/v1/access_token/{full[:10]}", headers={"Authorization": f"aivenv1 {full}"})
    assert r.status_code == 200
    assert as_token(api, full).status_code == 403


def test_update_description(api):
    made = create(api)
    r = api.put(f"/v1/access_token/{made['token_prefix']}", json={"description": "renamed"})
    assert r.status_code == 200 and r.json()["description"] == "renamed" and "full_token" not in r.json()


@pytest.mark.parametrize("body,fragment", [
    ({"description": ""}, "description is required"),
    ({"description": "x", "max_age_seconds": 0}, "max_age_seconds must be an integer"),
    ({"description": "x", "max_age_seconds": "60"}, "max_age_seconds must be an integer"),
    ({"description": "x", "extend_when_used": True}, "extend_when_used needs max_age_seconds"),
    ({"description": "x", "max_age_seconds": 60, "extend_when_used": "yes"}, "extend_when_used must be"),
])
def test_bad_create_bodies_are_400(api, body, fragment):
    before = len(api.get("/v1/access_token").json()["tokens"])
    r = api.post("/v1/access_token", json=body)
    assert r.status_code == 400 and fragment in r.json()["message"]
    assert len(api.get("/v1/access_token").json()["tokens"]) == before


def test_tokens_are_stored_hashed(api):
    full = create(api)["full_token"]
    dump = raw_contents(api.store)
    assert full not in dump and api.creds.token not in dump and hash_token(full) in dump


def test_an_existing_database_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(str(path))
    db.executescript("CREATE TABLE tokens (token_hash TEXT PRIMARY KEY, description TEXT NOT NULL, "
                     "create_time TEXT NOT NULL);")
    db.execute("INSERT INTO tokens VALUES (?, 'initial token', '2025-01-01T00:00:00Z')",
               (hash_token("old-token-0123456789"),))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    (old,) = store.list_tokens()
    assert old.token_prefix is None and old.expiry is None and old.description == "initial token"
    assert store.token_valid("old-token-0123456789")  # never expires; its prefix is learnt at first use
    assert store.list_tokens()[0].token_prefix == "old-token-"
    store.close()
    assert SQLiteStore(path).token_valid("old-token-0123456789")  # a second open migrates nothing twice


def test_an_integral_float_max_age_is_an_integer_as_json_schema_says(api):
    made = create(api, max_age_seconds=3600.0, extend_when_used=True)
    assert made["max_age_seconds"] == 3600 and isinstance(made["max_age_seconds"], int)
    r = api.post("/v1/access_token", json={"description": "ci", "max_age_seconds": 3600.5})
    assert r.status_code == 400 and "max_age_seconds must be an integer" in r.json()["message"]


def test_revoking_a_token_older_than_prefixes_names_its_prefix(api):
    api.store.add_token("old-token-0123456789", "old", "2025-01-01T00:00:00Z")
    old = hash_token("old-token-0123456789")
    api.store.transaction(lambda tx: tx.put_token(dataclasses.replace(tx.token(old), token_prefix=None)))
    r = api.delete("/v1/access_token/old-token-0123456789")
    assert r.status_code == 200 and r.json()["message"] == "Access token old-token-... revoked"
