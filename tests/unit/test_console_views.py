"""The console's decisions (which actions, which wizard step, which label) as values, its pages and
view models on the API over a real store, and the replication-lag ring. The browser runs it all
against real clusters in tests/browser."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pgcrdr.agent.models import ClusterStatus, Endpoint, LsnInfo, NodeStatus
from pgcrdr.api.app import create_app
from pgcrdr.console.views import cycle_phase, last_problem, offered_actions, recovery_cycle, role_label
from pgcrdr.controlplane.lag import LagHistory, LagSample, pair_lag

P = "/v1/project/pgcrdr"


def svc(name: str, state: str = "RUNNING", role: str | None = None) -> dict:
    return {"service_name": name, "state": state, "disaster_recovery_role": role}


def op(kind: str, service: str = "pri", to: str = "pri", state: str = "running") -> dict:
    return {"operation_id": "x", "kind": kind, "service": service, "to": to, "state": state, "message": None}


def offered(primary: dict, recovery: dict | None, running: dict | None = None) -> set[str]:
    return {k for k, v in offered_actions(primary, recovery, running).items() if v.offered}


@pytest.mark.parametrize("primary,recovery,running,expected", [
    # a lone service: only "Create recovery service", once it runs
    (svc("pri"), None, None, {"create_recovery"}),
    (svc("pri", "REBUILDING"), None, None, set()),
    # the pair as set up: failover (through Manage > Service recovery cycle) and switchover
    (svc("pri", role="active"), svc("rec", role="passive"), None, {"recovery_cycle", "failover", "switchover"}),
    # the recovery copy still being built: nothing moves yet
    (svc("pri", role="active"), svc("rec", "REBUILDING", "passive"), op("setup", "rec"), {"recovery_cycle"}),
    (svc("pri", role="active"), svc("rec", "REBUILDING", "passive"), None, {"recovery_cycle"}),
    # after a failover: failback (restore)
    (svc("pri", "POWEROFF", "failed"), svc("rec", role="active"), None, {"recovery_cycle", "failback", "restore"}),
    # restoring: the failback wizard stays offered to follow it, nothing can be started
    (svc("pri", "REBUILDING", "passive"), svc("rec", role="active"), op("failback_restore"),
     {"recovery_cycle", "failback"}),
    # restored (or after a switchover): promote / switchback
    (svc("pri", role="passive"), svc("rec", role="active"), None,
     {"recovery_cycle", "failback", "promote", "switchback"}),
    # an operation moving the roles: nothing else is offered
    (svc("pri", "REBALANCING", "active"), svc("rec", "REBALANCING", "passive"), op("switchover", "rec", "rec"),
     {"recovery_cycle"}),
    (svc("pri", "REBALANCING", "passive"), svc("rec", "REBALANCING", "active"), op("failback_promote"),
     {"recovery_cycle", "failback"}),
])
def test_only_actions_that_make_sense_are_offered(primary, recovery, running, expected):
    assert offered(primary, recovery, running) == expected


def test_an_action_not_offered_says_why():
    offers = offered_actions(svc("pri", role="active"), svc("rec", role="passive"), op("switchover", "rec", "rec"))
    assert offers["failover"].why == "a switchover to recovery service operation is in progress"
    offers = offered_actions(svc("pri", "REBUILDING"), None, None)
    assert "wait until it is RUNNING" in offers["create_recovery"].why


@pytest.mark.parametrize("service,label", [
    (svc("s"), None),
    (svc("s", role="active"), "Active"),
    (svc("s", "REBALANCING", "passive"), "Passive"),
    (svc("s", "REBUILDING", "passive"), "Rebuilding"),
    (svc("s", "POWEROFF", "failed"), "Failed"),
])
def test_role_labels(service, label):
    assert role_label(service) == label


def test_the_service_recovery_cycle_follows_the_seed():
    pri, rec = svc("pri", role="active"), svc("rec", role="passive")

    def statuses(p, r, running=None, last=None):
        cyc = recovery_cycle(p, r, running, last, offered_actions(p, r, running))
        return [(s["id"], s["status"], s["offered"]) for s in cyc["steps"]]

    assert statuses(pri, rec) == [("failover", "current", True), ("restore", "pending", False),
                                  ("promote", "pending", False), ("done", "pending", False)]
    failed = svc("pri", "POWEROFF", "failed")
    active = svc("rec", role="active")
    assert statuses(failed, active, last="failover")[:2] == [("failover", "done", False), ("restore", "current", True)]
    rebuilding = svc("pri", "REBUILDING", "passive")
    assert statuses(rebuilding, active, op("failback_restore"))[1] == ("restore", "running", False)
    passive = svc("pri", role="passive")
    assert statuses(passive, active, last="failback_restore")[2] == ("promote", "current", True)
    assert statuses(pri, rec, last="failback_promote")[3] == ("done", "current", True)
    assert cycle_phase(passive, active, None, "switchover") == "swapped"
    assert cycle_phase(pri, rec, op("switchback", "pri", "pri"), None) == "promoting"


def test_last_problem_is_shown_until_another_operation_runs():
    failed = {**op("failback_restore", state="failed"), "message": "failback_restore failed at preserve: boom"}
    assert last_problem([op("failover", state="done"), failed])["message"] == \
        "Restore primary service failed: failback_restore failed at preserve: boom"
    assert last_problem([failed, op("failback_restore", state="done")]) is None
    assert last_problem([failed, op("failback_restore")]) is not None  # the retry has not finished yet
    assert last_problem([]) is None


def test_lag_ring_keeps_recent_minutes_one_sample_a_second():
    lag = LagHistory(keep_s=60, min_interval_s=1)
    for i in range(200):
        lag.record("p", "pair", LagSample(1000 + i * 0.5, "rec", i, None))
    got = lag.samples("p", "pair")
    assert len(got) == 61 and got[-1]["t"] - got[0]["t"] == 60
    assert all(b["t"] - a["t"] >= 1 for a, b in zip(got, got[1:], strict=False))
    assert lag.samples("p", "pair", since=got[-2]["t"]) == [got[-1]]


def _status(name: str, standby: bool, current: str | None = None, replay: str | None = None,
            lag_s: float | None = None) -> ClusterStatus:
    ep = Endpoint(host="127.0.0.1", port=1)
    lsn = LsnInfo(node=f"{name}-1", in_recovery=standby, current_lsn=current, replay_lsn=replay, lag_seconds=lag_s)
    node = NodeStatus(name=f"{name}-1", host="127.0.0.1", pg_port=1, rest_port=2,
                      role="standby_leader" if standby else "primary", state="running")
    return ClusterStatus(cluster=name, region="r", ready=True, standby=standby, primary=ep, replica=ep,
                         nodes=[node], lsn=lsn, generation=99)


def _pair(api):
    body = {"service_type": "pg", "plan": "startup-4", "user_config": {}}
    assert api.post(f"{P}/service", json={**body, "service_name": "pg-pri", "cloud": "local-europe-west1"}
                    ).status_code == 200
    r = api.post(f"{P}/service", json={**body, "service_name": "pg-rec", "cloud": "local-us-east1",
                                       "service_integrations": [{"integration_type": "disaster_recovery",
                                                                 "source_service": "pg-pri"}]})
    assert r.status_code == 200, r.text

    def running(status):
        return lambda cur: cur.model_copy(update={"state": "RUNNING", "ever_ready": True, "status": status})

    api.store.update_service("pgcrdr", "pg-pri", running(_status("pg-pri", False, current="0/3000100")))
    api.store.update_service("pgcrdr", "pg-rec", running(_status("pg-rec", True, replay="0/3000000", lag_s=0.25)))


def test_pair_lag_is_the_writer_minus_what_the_passive_replayed(api):
    _pair(api)
    pri, rec = api.store.get_service("pgcrdr", "pg-pri"), api.store.get_service("pgcrdr", "pg-rec")
    assert pair_lag(pri, rec, 5.0) == LagSample(5.0, "pg-rec", 0x100, 0.25)
    failed = pri.model_copy(update={"dr_role": "failed"})
    active = rec.model_copy(update={"dr_role": "active"})
    assert pair_lag(failed, active, 6.0) == LagSample(6.0, None, None, None)  # nothing replicates
    lag = LagHistory()
    lag.sample(api.store.list_services(), 7.0)
    assert [s["lag_bytes"] for s in lag.samples("pgcrdr", "pg-pri")] == [0x100]


@pytest.fixture()
def console(api):
    """The API app with a lag ring the test can fill."""
    lag = LagHistory()
    app = create_app(api.app.state.ctx.settings, api.store, lag=lag)
    client = TestClient(app, raise_server_exceptions=False)
    client.headers["Authorization"] = api.headers["Authorization"]
    client.lag = lag  # type: ignore[attr-defined]
    client.store = api.store  # type: ignore[attr-defined]
    return client


def test_pages_favicon_and_static_files_are_served(console):
    for path, fragment in [("/", "Sign in to pgcrdr"), ("/console/project/pgcrdr", "Services"),
                           ("/console/project/pgcrdr/service/pg-x", "Disaster recovery"),
                           ("/console/project/pgcrdr/service/pg-x/disaster-recovery",
                            "Cross-region disaster recovery")]:
        r = console.get(path)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], path
        assert fragment in r.text and "/console/static/console.js" in r.text
    assert console.get("/favicon.ico").headers["content-type"] == "image/svg+xml"
    for f in ("console.js", "console.css", "favicon.svg"):
        assert console.get(f"/console/static/{f}").status_code == 200
    assert "cdn" not in console.get("/").text.lower(), "the console works offline"


def test_view_models_need_a_token_and_say_what_is_missing(console):
    anonymous = TestClient(console.app)
    r = anonymous.get("/console/api/project/pgcrdr/services")
    assert r.status_code == 401 and "Authentication required" in r.json()["message"]
    r = console.get("/console/api/project/pgcrdr/service/pg-nope/disaster-recovery")
    assert r.status_code == 404 and r.json()["message"] == "Service pg-nope does not exist"
    r = console.get("/console/api/project/nope/services")
    assert r.status_code == 404 and r.json()["message"] == "Project nope does not exist"


def test_disaster_recovery_view_of_a_pair(console):
    _pair(console)
    for op_ in console.store.running_operations():  # the setup is over (no reconciler here)
        console.store.put_operation(op_.model_copy(update={"state": "done", "finish_time": op_.create_time}))
    console.lag.sample(console.store.list_services(), 100.0)
    for name in ("pg-pri", "pg-rec"):  # the same pair, seen from either side
        v = console.get(f"/console/api/project/pgcrdr/service/{name}/disaster-recovery").json()
        assert (v["primary"]["service_name"], v["primary"]["label"]) == ("pg-pri", "Active")
        assert (v["recovery"]["service_name"], v["recovery"]["label"]) == ("pg-rec", "Passive")
        assert v["replication"] == {"from": "pg-pri", "to": "pg-rec", "lag_bytes": 0x100, "lag_seconds": 0.25}
        assert v["lag_history"] == [{"t": 100.0, "passive": "pg-rec", "lag_bytes": 0x100, "lag_seconds": 0.25}]
        assert {k for k, a in v["actions"].items() if a["offered"]} == {"recovery_cycle", "failover", "switchover"}
        assert v["actions"]["failback"]["label"] == "Failback to primary region"
        assert [s["label"] for s in v["cycle"]["steps"]] == [
            "Initiate failover", "Restore primary service", "Promote primary to active", "Done"]
        assert [o["kind"] for o in v["history"]] == ["setup"] and v["problem"] is None
    services = console.get("/console/api/project/pgcrdr/services").json()["services"]
    assert [(s["service_name"], s["label"], s["kind"]) for s in services] == [
        ("pg-pri", "Active", "primary"), ("pg-rec", "Passive", "recovery")]


def test_disaster_recovery_view_of_a_lone_service(console):
    r = console.post(f"{P}/service", json={"service_name": "pg-solo", "service_type": "pg", "plan": "startup-4",
                                           "cloud": "local-europe-west1", "user_config": {}})
    assert r.status_code == 200
    v = console.get("/console/api/project/pgcrdr/service/pg-solo/disaster-recovery").json()
    assert v["recovery"] is None and v["cycle"] is None and v["replication"] is None
    assert v["actions"]["create_recovery"]["offered"] is False  # still REBUILDING
    assert [c["cloud_name"] for c in v["clouds"]] == ["local-us-east1"]  # another region only
