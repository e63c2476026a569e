"""A refused request changes nothing at all, on a real store: a PUT whose role change is refused
writes none of its other fields, and a refusal on one side of a pair writes nothing on the other."""

from __future__ import annotations

import pytest

from tests.unit.api_pairs import P, assert_error, create, everything, finish_operations, set_running  # noqa: F401


FIELDS = [
    {"plan": "startup-8"},
    {"maintenance": {"dow": "monday", "time": "01:02:03"}},
    {"termination_protection": True},
    {"user_config": {"ip_filter": ["10.0.0.0/8"]}},
    {"tech_emails": [{"email": "ops@example.com"}]},
    {"plan": "startup-8", "user_config": {}, "powered": True},  # what avn and Terraform send along
]

ILLEGAL_ROLES = [
    ("pg-primary", "passive", 400, "is the active service"),  # use a switchover instead
    ("pg-primary-dr", "failed", 400, "Only the primary service can be marked failed"),
    ("pg-primary", "boss", 400, "Invalid disaster_recovery_role"),
]


@pytest.mark.parametrize("fields", FIELDS, ids=lambda f: "+".join(f))
@pytest.mark.parametrize("service,role,status,fragment", ILLEGAL_ROLES, ids=lambda x: str(x))
def test_an_illegal_role_change_changes_no_other_field(pair, fields, service, role, status, fragment):
    before = everything(pair)
    r = pair.put(f"{P}/service/{service}", json={**fields, "disaster_recovery_role": role})
    assert_error(r, status, fragment)
    assert everything(pair) == before


@pytest.mark.parametrize("fields", FIELDS, ids=lambda f: "+".join(f))
def test_a_conflicting_role_change_changes_no_other_field(pair, fields):
    # the recovery copy is not streaming: promoting it could lose writes (409)
    set_running(pair, "pg-primary-dr", standby=False)
    before = everything(pair)
    r = pair.put(f"{P}/service/pg-primary-dr", json={**fields, "disaster_recovery_role": "active"})
    assert_error(r, 409, "is not streaming")
    assert everything(pair) == before


@pytest.mark.parametrize("fields", FIELDS[:4], ids=lambda f: "+".join(f))
def test_a_role_change_on_a_lone_service_changes_no_other_field(api, fields):
    create(api, "solo")
    before = api.get(f"{P}/service/solo").content
    r = api.put(f"{P}/service/solo", json={**fields, "disaster_recovery_role": "failed"})
    assert_error(r, 400, "no disaster recovery peer")
    assert api.get(f"{P}/service/solo").content == before


def test_a_refused_field_starts_no_role_change(pair):
    before = everything(pair)
    r = pair.put(f"{P}/service/pg-primary-dr", json={"plan": "business-4", "disaster_recovery_role": "active"})
    assert_error(r, 400, "is not supported yet")
    assert everything(pair) == before
    assert pair.store.running_operations() == []


def test_an_accepted_put_with_plan_and_role_does_both(pair):
    # what `avn service update pg-primary-dr --disaster-recovery-role active --plan startup-8` sends
    gen = pair.store.get_service("pgcrdr", "pg-primary-dr").generation
    r = pair.put(f"{P}/service/pg-primary-dr",
                 json={"plan": "startup-8", "user_config": {}, "disaster_recovery_role": "active"})
    assert r.status_code == 200, r.text
    svc = r.json()["service"]
    assert (svc["plan"], svc["state"]) == ("startup-8", "REBALANCING")
    assert pair.store.get_service("pgcrdr", "pg-primary-dr").generation == gen + 1
    assert [(o.kind, o.source, o.target) for o in pair.store.running_operations()] == \
        [("switchover", "pg-primary", "pg-primary-dr")]
    assert pair.get(f"{P}/service/pg-primary").json()["service"]["plan"] == "startup-4"


def test_an_accepted_put_with_the_current_role_still_applies_the_fields(pair):
    # Terraform sends every field with the role the service already has, and powered=true
    r = pair.put(f"{P}/service/pg-primary", json={"plan": "startup-8", "powered": True, "termination_protection": True,
                                                  "disaster_recovery_role": "active"})
    assert r.status_code == 200, r.text
    svc = r.json()["service"]
    assert (svc["plan"], svc["termination_protection"], svc["state"]) == ("startup-8", True, "RUNNING")
    assert pair.store.running_operations() == []


def test_a_refused_database_or_user_changes_neither_side_of_a_pair(pair):
    # the peer's record already has them (e.g. written by an older version): the request is not
    # refused half-way, the active one gets them and the pair's records agree
    def seed(cur):
        return cur.model_copy(update={"databases": [*cur.databases, "app"]})
    pair.store.update_service("pgcrdr", "pg-primary-dr", seed)
    assert pair.post(f"{P}/service/pg-primary/db", json={"database": "app"}).status_code == 200
    for name in ("pg-primary", "pg-primary-dr"):
        assert pair.store.get_service("pgcrdr", name).databases.count("app") == 1
    assert pair.post(f"{P}/service/pg-primary/user", json={"username": "app"}).status_code == 200
    pri, rec = (pair.store.get_service("pgcrdr", n) for n in ("pg-primary", "pg-primary-dr"))
    assert [u for u in pri.users if u.username == "app"] == [u for u in rec.users if u.username == "app"]
    # duplicates are refused and change nothing on either side
    before = everything(pair)
    assert_error(pair.post(f"{P}/service/pg-primary/db", json={"database": "app"}), 409, "already exists")
    assert_error(pair.post(f"{P}/service/pg-primary/user", json={"username": "app"}), 409, "already exists")
    assert_error(pair.put(f"{P}/service/pg-primary/tags", json={"tags": {"a": 1}}), 400, "string values")
    assert_error(pair.post(f"{P}/integration", json={"integration_type": "disaster_recovery",
                                                     "source_service": "pg-primary",
                                                     "dest_service": "pg-primary-dr"}), 409, "already exists")
    assert everything(pair) == before


FORK_REFUSALS = [
    ({"service_to_fork_from": "pg-nope"}, "local-europe-west1", 404, "Service pg-nope does not exist"),
    ({"service_to_fork_from": "pg-primary", "project_to_fork_from": "nope"}, None, 404, "Project nope does not exist"),
    ({"service_to_fork_from": "pg-primary"}, None, 409, "has no backup yet"),
    ({"recovery_target_time": "2026-11-30T11:30:00Z"}, None, 400, "add service_to_fork_from"),
    ({"service_to_fork_from": 5}, None, 400, "service_to_fork_from must be a string"),
]


@pytest.mark.parametrize("user_config,cloud,status,fragment", FORK_REFUSALS, ids=lambda x: str(x))
def test_a_refused_fork_creates_nothing(pair, user_config, cloud, status, fragment):
    before = everything(pair)
    r = pair.post(f"{P}/service", json={"service_name": "pg-fork", "service_type": "pg", "plan": "startup-4",
                                        "cloud": cloud, "user_config": user_config})
    assert_error(r, status, fragment)
    assert everything(pair) == before


def test_a_service_cannot_become_a_fork_afterwards(pair):
    before = everything(pair)
    r = pair.put(f"{P}/service/pg-primary-dr", json={"user_config": {"service_to_fork_from": "pg-primary"}})
    assert_error(r, 400, "can only be set when a service is created")
    assert everything(pair) == before
