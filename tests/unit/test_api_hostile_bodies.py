"""Hostile request bodies at the API layer on a real store: too deep, too large, or carrying huge
values, they get a short 4xx in the usual error shape, never a 500 or an answer echoing them."""

from __future__ import annotations

import json

import pytest

from pgcrdr.api.bodies import MAX_BODY_BYTES, MAX_JSON_DEPTH, json_too_deep
from tests.unit.api_pairs import P, assert_error, create, everything, finish_operations, set_running  # noqa: F401


def put_raw(api, raw: bytes, path=f"{P}/service/pg-primary"):
    return api.put(path, content=raw, headers={"content-type": "application/json"})


def test_deeply_nested_json_is_a_400_not_a_500(pair):
    before = everything(pair)
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"plan": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        assert_error(put_raw(pair, raw), 400, "JSON nested too deep")
    # POST routes and the login read bodies through the same reader
    assert_error(pair.post(f"{P}/service", content=b"[" * 100_000), 400, "JSON nested too deep")
    assert_error(pair.post("/v1/userauth", content=b"[" * 100_000, headers={"Authorization": ""}), 400,
                 "JSON nested too deep")
    assert everything(pair) == before


def test_nesting_up_to_the_limit_is_read():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert not json_too_deep(ok) and json_too_deep("[" + ok + "]")
    assert not json_too_deep(json.dumps({"a": "[[[[" * 100, "b": "\\\"{{{{" * 100}))
    assert json_too_deep(json.dumps({"a": "\\"}) + "[" * 65)
    # linear time on the shapes that make a string regex backtrack
    assert not json_too_deep('"' + '\\"' * 500_000)


def test_a_body_too_large_is_a_413(pair):
    before = everything(pair)
    big = json.dumps({"plan": "startup-4", "tags": {"x": "y" * (2 * 1024 * 1024)}}).encode()
    assert_error(put_raw(pair, big), 413, "too large")
    assert_error(pair.post(f"{P}/service", content=big, headers={"content-type": "application/json"}), 413,
                 "too large")
    # no Content-Length (chunked): counted while it is read
    chunks = (b" " * 65536 for _ in range(40))
    assert_error(pair.put(f"{P}/service/pg-primary/tags", content=chunks), 413, "too large")
    # any route, even one that reads no body, and the console
    assert_error(pair.request("GET", f"{P}/service", content=big), 413, "too large")
    assert_error(pair.request("GET", "/console/project/pgcrdr", content=big), 413, "too large")
    assert len(put_raw(pair, big).content) < 1024
    assert everything(pair) == before
    # just under the limit is read
    ok = json.dumps({"plan": "startup-4", "tags": {"x": "y" * (MAX_BODY_BYTES - 100)}}).encode()
    assert len(ok) <= MAX_BODY_BYTES
    assert pair.put(f"{P}/service/pg-primary", content=ok).status_code == 200


@pytest.mark.parametrize("body", [
    lambda v: {"plan": v},
    lambda v: {"cloud": v},
    lambda v: {"maintenance": {"dow": v}},
    lambda v: {"maintenance": {"time": v}},
    lambda v: {"user_config": {v: 1}},
    lambda v: {"user_config": {"pg_version": v}},
    lambda v: {"user_config": {"pg": {v: 1}}},
    lambda v: {"disaster_recovery_role": v},
    lambda v: {"plan": [v]},
])
def test_huge_invalid_values_are_not_echoed(pair, body):
    value = "x" * (MAX_BODY_BYTES - 1000)  # the largest a body can carry
    r = pair.put(f"{P}/service/pg-primary", json=body(value))
    assert 400 <= r.status_code < 500, r.text[:300]
    assert len(r.content) < 1024, r.text[:300]
    assert "xxxxxxxxxx" in r.json()["message"]  # a prefix is still quoted, so the user sees which value


def test_a_5mb_invalid_value_gets_a_short_answer(pair):
    r = pair.put(f"{P}/service/pg-primary", json={"plan": "x" * (5 * 1024 * 1024)})
    assert_error(r, 413, "too large")
    assert len(r.content) < 1024


@pytest.mark.parametrize("path,body", [
    (f"{P}/service", lambda v: {"service_name": v, "service_type": "pg", "plan": "startup-4"}),
    (f"{P}/service", lambda v: {"service_name": "ok-name", "service_type": v, "plan": "startup-4"}),
    (f"{P}/service", lambda v: {"service_name": "ok-name", "service_type": "pg", "plan": "startup-4",
                                "service_integrations": [{"integration_type": "disaster_recovery",
                                                          "source_service": v}]}),
    (f"{P}/service/pg-primary/db", lambda v: {"database": v}),
    (f"{P}/service/pg-primary/user", lambda v: {"username": v}),
    (f"{P}/integration", lambda v: {"integration_type": v}),
    (f"{P}/integration", lambda v: {"integration_type": "disaster_recovery", "source_service": v,
                                    "dest_service": "pg-primary"}),
    ("/v1/project", lambda v: {"project": v}),
])
def test_huge_values_are_not_echoed_by_other_routes(pair, path, body):
    r = pair.post(path, json=body("x" * 500_000))
    assert 400 <= r.status_code < 500, r.text[:300]
    assert len(r.content) < 1024, r.text[:300]


def test_long_paths_are_not_echoed(pair):
    r = pair.get(f"{P}/service/{'x' * 20_000}")
    assert_error(r, 404, "does not exist")
    assert len(r.content) < 1024
    assert len(pair.get("/v1/" + "y" * 20_000).content) < 1024


def test_validation_messages_quote_only_a_prefix():
    from fastapi.exceptions import RequestValidationError

    from pgcrdr.api.app import _describe_validation, error_body

    exc = RequestValidationError([{"loc": ("body", "k" * 50_000), "msg": "bad value " + "v" * 50_000,
                                   "type": "value_error"}] * 1000)
    message = _describe_validation(exc)
    assert message.startswith("Invalid request: kkkk") and "bad value vvvv" in message
    assert len(message) < 2000
    assert len(json.dumps(error_body(400, "z" * 10_000_000))) < 3000
