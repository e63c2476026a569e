"""The console's decisions (which actions, which wizard step, which label) as values, its pages and
view models on the API over a real store, and the replication-lag ring. The browser runs it all
against real clusters in tests/browser."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pgcrdr.agentapi.models import ClusterStatus, Endpoint, LsnInfo, NodeStatus
from pgcrdr.api.app import create_app
from pgcrdr.console.views import (
    cycle_phase,
    last_problem,
    node_rows,
    offered_actions,
    operation_duration_s,
    operation_now,
    recovery_cycle,
    role_label,
    service_uri_note,
    status_message_now,
)
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


# --- words a person reads: nodes, progress, messages, durations ------------------------------

def _node(state: str = "running", role: str = "standby", progress: list[dict] | None = None) -> dict:
    return {"name": "n1", "state": state, "role": role, "progress_updates": progress or []}


PREPARE_0 = {"phase": "prepare", "min": 0, "max": 100, "current": 0, "unit": "prepare_percent", "completed": False}
PREPARE_DONE = {**PREPARE_0, "current": 100, "completed": True}
FINALIZE_DONE = {"phase": "finalize", "min": None, "max": None, "current": None, "unit": None, "completed": True}


def _restore_op(done: tuple[str, ...], running_step: str) -> dict:
    steps = [{"name": n, "state": "done" if n in done else "running" if n == running_step else "pending"}
             for n in ("preserve", "restore", "rebuild_passive", "wait_passive_in_sync")]
    return {**op("failback_restore", "pri", "pri"), "steps": steps}


def test_nodes_are_said_in_words_and_a_built_node_shows_no_stale_progress():
    running = {**svc("pri", role="active"),
               "node_states": [_node(role="master", progress=[PREPARE_DONE, FINALIZE_DONE])]}
    assert node_rows(running) == [{"name": "n1", "role": "primary", "state": "running", "progress": []}]
    standby = {**svc("rec", role="passive"), "node_states": [_node("syncing_data")]}
    assert node_rows(standby)[0]["state"] == "catching up" and node_rows(standby)[0]["role"] == "standby"
    # A powered-off (failed) primary: its nodes are powered off, not "standby, leaving".
    off = {**svc("pri", "POWEROFF", "failed"), "node_states": [_node("leaving")]}
    assert node_rows(off) == [{"name": "n1", "role": "–", "state": "powered off", "progress": []}]


def test_restore_progress_follows_the_operation_not_a_prepare_at_zero():
    rebuilding = {**svc("pri", "REBUILDING", "passive"), "node_states": [_node("syncing_data", progress=[PREPARE_0])]}
    # The restore step is done and the node waits to stream: not "prepare: 0 %".
    [row] = node_rows(rebuilding, _restore_op(("preserve", "restore", "rebuild_passive"), "wait_passive_in_sync"))
    assert row["progress"] == [{"label": "data restored; catching up with the active service", "max": None,
                                "current": None}]
    [row] = node_rows(rebuilding, _restore_op(("preserve",), "restore"))
    assert row["progress"][0]["label"] == "restoring the data"
    # A measured copy keeps its bar.
    copying = {**rebuilding, "node_states": [_node("syncing_data", progress=[
        PREPARE_DONE, {"phase": "basebackup", "min": 0, "max": 4 << 20, "current": 1 << 20,
                       "unit": "bytes_uncompressed", "completed": False}])]}
    [row] = node_rows(copying, _restore_op(("preserve",), "restore"))
    assert row["progress"] == [{"label": "copying data: 1.0 MB of 4.0 MB", "max": 4 << 20, "current": 1 << 20}]


def test_a_no_writer_message_made_stale_by_the_operation_is_not_shown():
    stale = "no writer at the moment: waiting for Patroni to elect a leader"
    active = {**svc("pri", role="active"), "status_message": f"no node takes writes right now: "
              f"waiting for Patroni to elect a leader; {stale}"}
    passive = {**svc("rec", role="passive"), "status_message": f"{stale}; backups: repository full"}
    promote = {**op("failback_promote"), "state": "done", "finish_time": "2025-01-01T00:00:10Z",
               "steps": [{"name": "records", "state": "done"}, {"name": "wait_passive_in_sync", "state": "done"}]}
    t_end = 1735689610.0
    assert status_message_now(active, None, [promote], t_end + 2) is None
    assert status_message_now(passive, None, [promote], t_end + 2) == "backups: repository full"
    assert status_message_now(active, None, [promote], t_end + 60) == active["status_message"]  # true again
    failed = {**promote, "state": "failed"}
    assert status_message_now(active, None, [failed], t_end + 2) == active["status_message"]
    # Still running its last step, roles recorded: the wait says what is true.
    waiting = {**promote, "state": "running", "to": "pri", "steps": [
        {"name": "records", "state": "done", "detail": None},
        {"name": "wait_passive_in_sync", "state": "running", "detail": f"rec is catching up: {stale}"}]}
    assert status_message_now(passive, waiting, [], t_end) == "backups: repository full"
    assert operation_now(waiting)["steps"][1]["detail"] == "rec is catching up: restarting as a standby of pri"
    before = {**waiting, "steps": [{"name": "records", "state": "pending", "detail": None}]}
    assert operation_now(before) == before and status_message_now(active, before, [], t_end) == active["status_message"]


def test_the_service_uri_note_says_where_it_leads():
    failed = {**svc("pri", "POWEROFF", "failed"), "kind": "primary"}
    active = {**svc("rec", role="active"), "kind": "recovery"}
    assert service_uri_note(failed, active) == ("The Service URI now reaches the recovery service rec, which is "
                                                "active (this service is powered off after the failover).")
    assert service_uri_note(active, failed) is None
    assert service_uri_note({**svc("pri", role="active"), "kind": "primary"}, None) is None


def test_operation_durations_to_the_millisecond():
    data = {"began_at": 100.0, "t_record_lsn": 100.0, "t_fence": 100.1, "t_promote": 100.2}
    steps = [{"name": "record_lsn", "state": "done", "duration_s": 0.1},
             {"name": "fence", "state": "done", "duration_s": 0.05},
             {"name": "promote", "state": "done", "duration_s": 0.4321}]
    assert operation_duration_s(steps, data) == 0.6321
    failed = [*steps[:2], {"name": "promote", "state": "failed", "duration_s": None}]
    assert operation_duration_s(failed, data) is None  # the caller falls back to the timestamps
    undone = [*failed, {"name": "undo_settle", "state": "done", "duration_s": 0.2}]
    assert operation_duration_s(undone, {**data, "t_undo_settle": 101.0}) == 1.2


def test_history_has_durations_and_an_undone_operation_says_why(console):
    _pair(console)
    [setup_op] = console.store.running_operations()
    steps = [s.model_copy(update={"state": "done", "duration_s": 0.25}) for s in setup_op.steps]
    data = {"began_at": 50.0, **{f"t_{s.name}": 50.0 + i for i, s in enumerate(steps)}}
    console.store.put_operation(setup_op.model_copy(update={"state": "done", "finish_time": setup_op.create_time,
                                                            "steps": steps, "data": data}))
    undone = setup_op.model_copy(update={
        "operation_id": "op-undone", "kind": "switchover", "state": "undone", "finish_time": setup_op.create_time,
        "message": "switchover undone, pg-pri stays the writer: pooled writes were held 5 s", "steps": [], "data": {}})
    console.store.put_operation(undone)
    v = console.get("/console/api/project/pgcrdr/service/pg-pri/disaster-recovery").json()
    by_kind = {o["kind"]: o for o in v["history"]}
    assert by_kind["setup"]["duration_s"] == len(steps) - 1 + 0.25
    assert by_kind["switchover"]["duration_s"] is None and by_kind["switchover"]["state"] == "undone"
    assert v["problem"]["message"] == ("Switchover to recovery service undone: switchover undone, pg-pri stays "
                                       "the writer: pooled writes were held 5 s")
    assert v["service_uri_note"] is None  # pg-pri is the writer
    assert v["primary"]["nodes"] == [{"name": "pg-pri-1", "role": "primary", "state": "running", "progress": []}]


def test_automatic_failover_in_a_line():
    from pgcrdr.console.views import automatic_failover_text

    assert automatic_failover_text(None) is None
    assert "off" in automatic_failover_text({"enabled": False, "grace_seconds": 30.0, "max_data_loss_bytes": 0})
    on = automatic_failover_text({"enabled": True, "grace_seconds": 30.0, "max_data_loss_bytes": 1024})
    assert "on, after 30 s" in on and "1024 bytes" in on
