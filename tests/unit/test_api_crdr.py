"""CRDR requests at the API layer on a real store (no regions): pairing, integrations, refusals
that change nothing, and the conflict rule. The real clusters are exercised in tests/e2e."""

from __future__ import annotations

import pytest

from pgcrdr.agentapi.models import ClusterStatus, Endpoint

P = "/v1/project/pgcrdr"




def create(api, name, cloud="local-europe-west1", dr_for=None):
    body = {"service_name": name, "service_type": "pg", "plan": "startup-4", "cloud": cloud, "user_config": {}}
    if dr_for:
        body["service_integrations"] = [{"integration_type": "disaster_recovery", "source_service": dr_for}]
    return api.post(f"{P}/service", json=body)


def set_running(api, name, standby=False):
    ep = Endpoint(host="127.0.0.1", port=1)
    status = ClusterStatus(cluster=name, region="r", ready=True, standby=standby, primary=ep, replica=ep,
                           generation=99)

    def change(cur):
        return cur.model_copy(update={"state": "RUNNING", "ever_ready": True, "status": status})

    api.store.update_service("pgcrdr", name, change)


def role(api, name, r):
    return api.put(f"{P}/service/{name}", json={"disaster_recovery_role": r, "plan": "startup-4", "user_config": {}})


def snapshot(api):
    return [(s["service_name"], s["state"], s["disaster_recovery_role"])
            for s in api.get(f"{P}/service").json()["services"]]


def test_dr_copy_pairs_the_services(api):
    create(api, "pg-primary")
    r = create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    assert r.status_code == 200, r.text
    rec = r.json()["service"]
    assert (rec["state"], rec["disaster_recovery_role"]) == ("REBUILDING", "passive")
    pri = api.get(f"{P}/service/pg-primary").json()["service"]
    assert pri["disaster_recovery_role"] == "active"
    assert rec["users"] == pri["users"], "the pair shares credentials"
    integ = pri["service_integrations"][0]
    assert (integ["integration_type"], integ["source_service"], integ["dest_service"]) == \
        ("disaster_recovery", "pg-primary", "pg-primary-dr")
    assert integ["active"] is True
    got = api.get(f"{P}/integration/{integ['service_integration_id']}").json()["service_integration"]
    assert got["dest_service"] == "pg-primary-dr"
    listed = api.get(f"{P}/service/pg-primary-dr/integration").json()["service_integrations"]
    assert [i["service_integration_id"] for i in listed] == [integ["service_integration_id"]]
    dr = api.get(f"{P}/service/pg-primary-dr/disaster-recovery").json()
    assert dr["peer_service"] == "pg-primary" and dr["history"] == [] and dr["operation"]["kind"] == "setup"


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"source_service": "nope"}, 404, "Service nope does not exist"),
        ({"source_service": "pg-primary", "cloud": "local-europe-west1"}, 400, "must run in another cloud"),
    ],
)
def test_bad_dr_copy_changes_nothing(api, body, status, fragment):
    create(api, "pg-primary")
    before = snapshot(api)
    r = create(api, "pg-x", cloud=body.get("cloud", "local-us-east1"), dr_for=body["source_service"])
    assert r.status_code == status and fragment in r.json()["message"]
    assert snapshot(api) == before


def test_refusals_change_nothing(api):
    create(api, "solo")
    assert role(api, "solo", "failed").status_code == 400
    assert "no disaster recovery peer" in role(api, "solo", "failed").json()["message"]
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    set_running(api, "pg-primary")
    before = snapshot(api)
    r = role(api, "pg-primary-dr", "failed")
    assert r.status_code == 400 and "Only the primary service can be marked failed" in r.json()["message"]
    r = role(api, "pg-primary", "failed")  # the recovery copy is still being built
    assert r.status_code == 409 and "A setup operation is already running" in r.json()["message"]
    r = role(api, "pg-primary-dr", "active")
    assert r.status_code == 409 and "A setup operation is already running" in r.json()["message"]
    r = role(api, "pg-primary", "boss")
    assert r.status_code == 400 and "Invalid disaster_recovery_role" in r.json()["message"]
    assert snapshot(api) == before
    assert role(api, "pg-primary", "active").status_code == 200  # already active: nothing to do


def test_one_operation_at_a_time(api):
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    set_running(api, "pg-primary")
    set_running(api, "pg-primary-dr", standby=True)
    # the setup operation still runs (no reconciler here): a role change must wait for it
    r = role(api, "pg-primary", "failed")
    assert r.status_code == 409 and "already running" in r.json()["message"]
    for op in api.store.running_operations():
        api.store.put_operation(op.model_copy(update={"state": "done"}))
    assert role(api, "pg-primary", "failed").status_code == 200
    r = role(api, "pg-primary-dr", "active")
    assert r.status_code == 409 and "already running" in r.json()["message"]
    svc = api.get(f"{P}/service/pg-primary").json()["service"]
    assert svc["state"] == "REBALANCING"


def test_integration_api(api):
    create(api, "pg-a")
    create(api, "pg-b", cloud="local-us-east1")
    bad = api.post(f"{P}/integration", json={"integration_type": "read_replica", "source_service": "pg-a",
                                             "dest_service": "pg-b"})
    assert bad.status_code == 400
    same = api.post(f"{P}/integration", json={"integration_type": "disaster_recovery", "source_service": "pg-a",
                                              "dest_service": "pg-a"})
    assert same.status_code == 400
    r = api.post(f"{P}/integration", json={"dest_endpoint_id": None, "dest_service": "pg-b",
                                           "integration_type": "disaster_recovery", "source_endpoint_id": None,
                                           "source_service": "pg-a", "user_config": {}})
    assert r.status_code == 200, r.text
    iid = r.json()["service_integration"]["service_integration_id"]
    dup = api.post(f"{P}/integration", json={"integration_type": "disaster_recovery", "source_service": "pg-a",
                                             "dest_service": "pg-b"})
    assert dup.status_code == 409 and "already exists" in dup.json()["message"]
    assert api.get(f"{P}/service/pg-b").json()["service"]["disaster_recovery_role"] == "passive"
    assert api.delete(f"{P}/integration/{iid}").status_code == 200
    assert api.get(f"{P}/integration/{iid}").status_code == 404
    # deleting the integration changes no roles
    assert api.get(f"{P}/service/pg-b").json()["service"]["disaster_recovery_role"] == "passive"
    assert api.delete(f"{P}/integration/{iid}").status_code == 404


def test_passive_is_read_only_for_users_and_databases(api):
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    r = api.post(f"{P}/service/pg-primary-dr/db", json={"database": "x"})
    assert r.status_code == 409 and "create it on the active service pg-primary" in r.json()["message"]
    assert api.post(f"{P}/service/pg-primary/user", json={"username": "app"}).status_code == 200
    users = [u["username"] for u in api.get(f"{P}/service/pg-primary-dr").json()["service"]["users"]]
    assert "app" in users
    r = api.put(f"{P}/service/pg-primary", json={"powered": False})
    assert r.status_code == 409 and "disaster recovery pair" in r.json()["message"]


def test_terminating_pair_members(api):
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    for op in api.store.running_operations():
        api.store.put_operation(op.model_copy(update={"state": "done"}))
    r = api.delete(f"{P}/service/pg-primary")
    assert r.status_code == 409 and "terminate the passive recovery service first" in r.json()["message"]
    assert api.delete(f"{P}/service/pg-primary-dr").status_code == 200
    pri = api.get(f"{P}/service/pg-primary").json()["service"]
    assert pri["disaster_recovery_role"] is None and pri["service_integrations"] == []
    assert api.get(f"{P}/service/pg-primary-dr").status_code == 404


def test_reversed_integration_is_a_switchover(api):
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    for op in api.store.running_operations():
        api.store.put_operation(op.model_copy(update={"state": "done"}))
    set_running(api, "pg-primary")
    set_running(api, "pg-primary-dr", standby=True)
    old = api.get(f"{P}/service/pg-primary/integration").json()["service_integrations"][0]
    assert api.delete(f"{P}/integration/{old['service_integration_id']}").status_code == 200
    r = api.post(f"{P}/integration", json={"integration_type": "disaster_recovery",
                                           "source_service": "pg-primary-dr", "dest_service": "pg-primary"})
    assert r.status_code == 200, r.text
    assert r.json()["service_integration"]["source_service"] == "pg-primary-dr"
    ops = api.store.running_operations()
    assert [(o.kind, o.source, o.target) for o in ops] == [("switchover", "pg-primary", "pg-primary-dr")]


def test_terminating_a_copy_still_being_built_cancels_its_setup(api):
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    assert [o.kind for o in api.store.running_operations()] == ["setup"]
    assert api.delete(f"{P}/service/pg-primary-dr").status_code == 200
    assert api.store.running_operations() == []
    ops = api.store.list_operations("pgcrdr", "pg-primary")
    assert ops[-1].state == "failed" and "cancelled" in (ops[-1].message or "")
