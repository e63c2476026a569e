"""The project event log: every mutating request and each operation's start and end, as
``avn events`` reads them (GET /v1/project/P/events), on the API over a real store."""

from __future__ import annotations

from pgcrdr.api.events import describe_request, redact_path
from pgcrdr.controlplane.store import Store
from tests.unit.stores import every_store_backend  # noqa: F401  (runs each test on both stores)

P = "/v1/project/pgcrdr"
BODY = {"service_type": "pg", "plan": "startup-4", "user_config": {}}


def events(api, **params):
    r = api.get(f"{P}/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def test_a_service_create_is_an_event_with_aiven_fields_and_the_token_description(api):
    r = api.post(f"{P}/service", json={**BODY, "service_name": "pg-a", "cloud": "local-europe-west1"})
    assert r.status_code == 200, r.text
    api.get(f"{P}/service/pg-a")  # reads are not events
    (e,) = events(api)
    assert set(e) == {"id", "time", "actor", "event_type", "event_desc", "service_name"}
    assert (e["event_type"], e["service_name"]) == ("service_create", "pg-a")
    assert e["time"].endswith("Z") and isinstance(e["id"], str)
    assert e["actor"].startswith("initial token (")
    assert api.creds.token not in str(e), "the event names the token by description and prefix, never in full"
    assert "POST /v1/project/pgcrdr/service -> 200" in e["event_desc"]


def test_refused_requests_are_events_with_their_status_and_message_newest_first(api):
    api.post(f"{P}/service", json={**BODY, "service_name": "pg-a", "cloud": "local-europe-west1"})
    r = api.delete(f"{P}/service/nope")
    assert r.status_code == 404
    api.put(f"{P}/service/pg-a/tags", json={"tags": {"team": "db"}})
    got = events(api)
    assert [e["event_type"] for e in got] == ["service_tags_update", "service_delete", "service_create"]
    assert got[1]["service_name"] == "nope"
    assert "-> 404 Service nope does not exist" in got[1]["event_desc"]
    assert [e["event_type"] for e in events(api, limit=1)] == ["service_tags_update"]


def test_unauthenticated_and_bad_token_requests_are_recorded_without_the_token(api):
    bad = "not-a-real-token-value-xyz"
    r = api.post(f"{P}/service", json={**BODY, "service_name": "pg-x"}, headers={"Authorization": f"aivenv1 {bad}"})
    assert r.status_code == 403
    r = api.post(f"{P}/service", json={**BODY, "service_name": "pg-y"}, headers={"Authorization": ""})
    assert r.status_code == 401
    got = events(api)
    # refused before the body was read: the service's name is not known
    assert [(e["actor"], e["event_type"]) for e in got] == [("anonymous", "service_create"),
                                                           ("unknown token", "service_create")]
    assert "-> 401 Authentication required" in got[0]["event_desc"]
    assert bad not in str(got)


def test_operation_start_and_end_are_events_written_by_the_store(api):
    api.post(f"{P}/service", json={**BODY, "service_name": "pg-pri", "cloud": "local-europe-west1"})
    r = api.post(f"{P}/service", json={**BODY, "service_name": "pg-rec", "cloud": "local-us-east1",
                                       "service_integrations": [{"integration_type": "disaster_recovery",
                                                                 "source_service": "pg-pri"}]})
    assert r.status_code == 200, r.text
    store: Store = api.store
    (op,) = store.running_operations()
    types = [e["event_type"] for e in events(api)]
    assert types[:2] == ["service_create", "crdr_setup_start"], types  # the start is in the request's transaction
    start = next(e for e in events(api) if e["event_type"] == "crdr_setup_start")
    assert start["actor"] == "pgcrdr" and start["service_name"] == op.service
    # progress writes are not events; the end is one, once
    assert store.put_operation(op.model_copy(update={"message": "still copying"}))
    assert store.put_operation(op.model_copy(update={"state": "done", "finish_time": "2099-01-01T00:00:00Z",
                                                     "write_pause_s": 0.5, "message": "in sync"}))
    assert not store.put_operation(op.model_copy(update={"state": "running"}))  # an ended op stays ended
    ops = [e for e in events(api) if e["event_type"].startswith("crdr_")]
    assert [e["event_type"] for e in ops] == ["crdr_setup_done", "crdr_setup_start"]
    assert "write pause 0.50 s: in sync" in ops[0]["event_desc"]


def test_retention_keeps_the_newest_events_of_each_project(api):
    store: Store = api.store
    store.events_keep = 5
    for i in range(30):
        store.add_event("a", "t", "x", f"a{i}")
        store.add_event("b", "t", "x", f"b{i}")
    assert [e.event_desc for e in store.list_events("a", 100)] == [f"a{i}" for i in range(29, 24, -1)]
    assert [e.event_desc for e in store.list_events("b", 100)] == [f"b{i}" for i in range(29, 24, -1)]


def test_a_token_in_a_revoke_path_is_cut_to_its_prefix(api):
    token = api.post("/v1/access_token", json={"description": "ci"}).json()["full_token"]
    assert api.delete(f"/v1/access_token/{token}").status_code == 200
    logged = [e.event_desc for e in api.store.list_events("", 100)]  # token events are outside projects
    assert any("access_token" in d for d in logged) and not any(token in d for d in logged)
    assert redact_path(f"/v1/access_token/{token}") == f"/v1/access_token/{token[:10]}..."


def test_login_is_recorded_with_the_email_never_the_password(api):
    email, password = api.creds.email, api.creds.password
    assert api.post("/v1/userauth", json={"email": email, "password": password}).status_code == 200
    assert api.post("/v1/userauth", json={"email": email, "password": "wrong"}).status_code == 403
    logins = [e for e in api.store.list_events("", 100) if e.event_type == "user_login"]
    assert [(e.actor, e.event_desc.endswith("-> 403 Authentication failed")) for e in logins] == \
        [(email, True), (email, False)]
    assert not any(password in e.event_desc for e in logins)


def test_describe_request_reads_names_and_roles_only():
    assert describe_request("PUT", f"{P}/service/pg-a", {"disaster_recovery_role": "failed", "plan": "x"}) == \
        ("pgcrdr", "pg-a", "service_update", "Request disaster recovery role failed for service pg-a")
    assert describe_request("POST", f"{P}/integration", {"integration_type": "disaster_recovery",
                                                         "source_service": "a", "dest_service": "b"})[1:3] == \
        ("b", "service_integration_create")
    assert describe_request("POST", "/v1/userauth", {"email": "e", "password": "secret"})[3] == "Log in as e"


def test_console_lists_a_services_recent_events(api):
    api.post(f"{P}/service", json={**BODY, "service_name": "pg-a", "cloud": "local-europe-west1"})
    api.post(f"{P}/service", json={**BODY, "service_name": "pg-b", "cloud": "local-europe-west1"})
    r = api.get("/console/api/project/pgcrdr/service/pg-a/events")
    assert r.status_code == 200
    assert [e["service_name"] for e in r.json()["events"]] == ["pg-a"]
    assert api.get("/console/api/project/pgcrdr/service/none/events").status_code == 404
    assert 'id="svc-events"' in api.get("/console/project/pgcrdr/service/pg-a").text
    assert api.get("/console/api/project/pgcrdr/service/pg-a/events", headers={"Authorization": ""}
                   ).status_code == 401
