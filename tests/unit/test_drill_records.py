"""Drill records (pgcrdr drill): kept with a pair's primary through the API, on both stores, shown
in GET .../disaster-recovery as ``drills``; the pair's operations' history is not touched."""

from __future__ import annotations

from tests.unit.api_pairs import P, assert_error, create
from tests.unit.stores import every_store_backend  # noqa: F401  (runs each test on both stores)

URL = f"{P}/service/pg-primary/disaster-recovery/drills"
BODY = {"kind": "failover", "in_place": False, "state": "done", "report": {"rto_s": 4.2, "steps": []}}


def test_a_drill_is_kept_with_the_pair_and_not_in_its_history(api, pair):
    before = api.get(f"{P}/service/pg-primary/disaster-recovery").json()
    r = api.post(URL, json=BODY)
    assert r.status_code == 200, r.text
    drill = r.json()["drill"]
    assert drill["kind"] == "failover" and drill["pair"] == "pg-primary" and drill["report"]["rto_s"] == 4.2
    second = api.post(URL, json={**BODY, "kind": "switchover", "state": "interrupted"}).json()["drill"]
    listed = api.get(URL).json()["drills"]
    assert [d["drill_id"] for d in listed] == [drill["drill_id"], second["drill_id"]]
    for name in ("pg-primary", "pg-primary-dr"):  # both sides of the pair show them
        dr = api.get(f"{P}/service/{name}/disaster-recovery").json()
        assert [d["drill_id"] for d in dr["drills"]] == [drill["drill_id"], second["drill_id"]]
        assert dr["history"] == before["history"] if name == "pg-primary" else True


def test_bad_drill_records_are_refused_and_nothing_is_kept(api, pair):
    assert_error(api.post(URL, json={**BODY, "kind": "nope"}), 400, "kind")
    assert_error(api.post(URL, json={**BODY, "in_place": "yes"}), 400, "in_place")
    assert_error(api.post(URL, json={**BODY, "extra": 1}), 400, "extra")
    assert_error(api.post(URL, json={k: v for k, v in BODY.items() if k != "report"}), 400, "report")
    assert_error(api.post(f"{P}/service/pg-primary-dr/disaster-recovery/drills", json=BODY), 409,
                 "not the primary service")
    assert_error(api.post(f"{P}/service/pg-nope/disaster-recovery/drills", json=BODY), 404)
    create(api, "solo")
    assert_error(api.get(f"{P}/service/solo/disaster-recovery/drills"), 409, "not the primary service")
    assert api.get(URL).json()["drills"] == []


def test_pgcrdr_drill_of_goes_only_with_a_fork_of_that_pair_primary(api, pair):
    body = {"service_name": "pg-drill", "service_type": "pg", "plan": "startup-4", "cloud": "local-europe-west1"}
    assert_error(api.post(f"{P}/service", json={**body, "pgcrdr_drill_of": "pg-primary"}), 400, "goes with a fork")
    assert_error(api.post(f"{P}/service", json={**body, "pgcrdr_drill_of": 5}), 400, "pgcrdr_drill_of")
    assert_error(api.post(f"{P}/service", json={
        **body, "pgcrdr_drill_of": "pg-primary", "user_config": {"service_to_fork_from": "pg-primary-dr"}}),
        400, "goes with a fork")
    assert api.get(f"{P}/service/pg-drill").status_code == 404
