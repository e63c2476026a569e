"""Automatic failover (opt-in, with writer leases): the pure decision, the API that sets it, and
the reconciler starting a failover by itself on a pair with fake regions."""

from __future__ import annotations

import time
from types import SimpleNamespace

from pgcrdr.agentapi.models import LsnInfo
from pgcrdr.controlplane.decide import automatic_failover_due
from pgcrdr.controlplane.reconciler import Reconciler
from pgcrdr.controlplane.records import AutomaticFailover
from tests.unit.api_pairs import P, assert_error, create, finish_operations, set_running
from tests.unit.test_operation_faults import EU, Rig

NOW = 1_000_000.0
CFG = AutomaticFailover(enabled=True, grace_seconds=30, max_data_loss_bytes=1000)


def _pair(api, active_seen: float | None, passive_seen: float | None, written: str = "0/3000400",
          received: str = "0/3000100"):  # noqa: ANN202
    create(api, "pg-primary")
    create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    set_running(api, "pg-primary")
    set_running(api, "pg-primary-dr", standby=True)
    finish_operations(api)
    a, b = api.store.get_service("pgcrdr", "pg-primary"), api.store.get_service("pgcrdr", "pg-primary-dr")
    a = a.model_copy(update={"status_time": active_seen, "status": a.status.model_copy(
        update={"lsn": LsnInfo(node="n1", in_recovery=False, current_lsn=written, timeline=1)})})
    b = b.model_copy(update={"status_time": passive_seen, "status": b.status.model_copy(
        update={"lsn": LsnInfo(node="n1", in_recovery=True, receive_lsn=received, replay_lsn=received, timeline=1)})})
    return a, b


def test_the_decision(api):
    a, b = _pair(api, active_seen=NOW - 40, passive_seen=NOW - 1)
    go, why = automatic_failover_due(CFG, a, b, NOW)
    assert go and "automatic" in why and "40 s" in why and "768 bytes" in why
    assert automatic_failover_due(None, a, b, NOW) is None
    assert automatic_failover_due(AutomaticFailover(enabled=False), a, b, NOW) is None
    assert automatic_failover_due(CFG, a.model_copy(update={"status_time": NOW - 10}), b, NOW) is None  # in grace
    withheld = automatic_failover_due(CFG.model_copy(update={"max_data_loss_bytes": 100}), a, b, NOW)
    assert withheld is not None and not withheld[0] and "above the bound" in withheld[1]
    silent_too = automatic_failover_due(CFG, a, b.model_copy(update={"status_time": NOW - 60}), NOW)
    assert silent_too is not None and not silent_too[0] and "does not answer either" in silent_too[1]
    # as in Aiven's CRDR only the primary fails over: with the recovery active, fail back first
    flipped = automatic_failover_due(CFG, b.model_copy(update={"dr_role": "active", "status_time": NOW - 40}),
                                     a.model_copy(update={"dr_role": "passive", "status_time": NOW}), NOW)
    assert flipped is None
    unknown = automatic_failover_due(CFG, a.model_copy(update={"status": None}), b, NOW)
    assert unknown is not None and not unknown[0] and "unknown" in unknown[1]


def test_the_api_sets_it_on_the_pair_and_refuses_it_without_writer_leases(api, monkeypatch):
    _pair(api, NOW, NOW)
    url = f"{P}/service/pg-primary-dr/disaster-recovery"
    assert api.get(url).json()["automatic_failover"]["enabled"] is False
    assert_error(api.put(url, json={"automatic_failover": {"enabled": True}}), 409, "needs writer leases")
    assert_error(api.put(url, json={"automatic_failover": {"enabled": "yes"}}), 400)
    assert_error(api.put(url, json={"automatic_failover": {"enabled": True, "grace_seconds": 0}}), 400)
    assert_error(api.put(url, json={"automatic_failover": {"enabled": True, "nope": 1}}), 400, "nope")
    assert_error(api.put(url, json={"something": 1}), 400, "something")
    assert api.put(url, json={"automatic_failover": {"enabled": False}}).status_code == 200  # off: always fine
    monkeypatch.setattr("pgcrdr.api.app.lease_store", lambda settings: (["http://127.0.0.1:1"], "/p/"))
    r = api.put(url, json={"automatic_failover": {"enabled": True, "grace_seconds": 20, "max_data_loss_bytes": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["automatic_failover"] == {"enabled": True, "grace_seconds": 20.0, "max_data_loss_bytes": 0}
    # kept on the pair: both sides show it
    assert api.get(f"{P}/service/pg-primary/disaster-recovery").json()["automatic_failover"]["enabled"] is True
    create(api, "solo")
    assert_error(api.put(f"{P}/service/solo/disaster-recovery", json={"automatic_failover": {"enabled": True}}),
                 409, "not part of a disaster recovery pair")


def test_the_reconciler_fails_a_silent_active_region_over_and_the_history_says_why(api):
    rig = Rig(api)
    rig.agents[EU].down = True
    rig.world.clusters[rig.a].writer = False  # its lease expired: its agent stopped the writer
    rig.runner.lease_holder = lambda cloud: None
    now = time.time()
    for name, seen in (("pg-a", now - 100), ("pg-b", now)):
        def change(cur, seen=seen, standby=name == "pg-b", cfg=CFG if name == "pg-a" else None):  # noqa: ANN001, ANN202
            lsn = LsnInfo(node="n1", in_recovery=standby, current_lsn=None if standby else "0/3000100",
                          receive_lsn="0/3000100" if standby else None, timeline=1)
            return cur.model_copy(update={"status_time": seen, "status": cur.status.model_copy(update={"lsn": lsn}),
                                          "automatic_failover": cfg})
        rig.store.update_service("pgcrdr", name, change)
    reconciler = SimpleNamespace(store=rig.store, runner=rig.runner, _withheld={})
    Reconciler.check_automatic_failover(reconciler, now)  # type: ignore[arg-type]
    op = rig.drive()
    assert op["kind"] == "failover" and op["state"] == "done", op["message"]
    assert op["data"]["automatic"].startswith("automatic: local-europe-west1 has not answered for 100 s")
    assert rig.assert_one_writer(op) == rig.b
    Reconciler.check_automatic_failover(reconciler, now)  # type: ignore[arg-type]
    assert rig.store.running_operations() == []  # once: the pair's active side now answers


def test_nothing_automatic_without_writer_leases(api):
    rig = Rig(api)
    rig.agents[EU].down = True
    rig.store.update_service("pgcrdr", "pg-a", lambda cur: cur.model_copy(
        update={"status_time": time.time() - 100, "automatic_failover": CFG}))
    assert rig.runner.lease_holder is None
    Reconciler.check_automatic_failover(SimpleNamespace(store=rig.store, runner=rig.runner, _withheld={}))  # type: ignore[arg-type]
    assert rig.store.running_operations() == []
