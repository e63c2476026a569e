"""The store's own contract, on SQLite and on etcd alike: records, transactions, operations'
write rules, concurrent read-modify-writes that lose nothing; and what is etcd's own: a bound
on conflicts, a member lost from a three-member cluster, settings refused clearly."""

from __future__ import annotations

import threading
import uuid

import pytest

from pgcrdr.config import Settings
from pgcrdr.controlplane.records import IntegrationRecord, OperationRecord, ProjectRecord, ServiceRecord
from pgcrdr.controlplane.store import (
    EtcdStore,
    Store,
    StoreConflict,
    StoreSettings,
    StoreSettingsError,
    StoreUnavailable,
    open_store,
)
from pgcrdr.etcdv3 import EtcdUnreachable, prefix_end
from pgcrdr.topology import TopologyError, parse_topology
from tests.etcd_cluster import EtcdCluster, free_ports
from tests.unit.stores import every_store_backend  # noqa: F401  (runs each test on both stores)
from tests.unit.test_topology import GOOD

P = "proj"


def service(name: str, project: str = P, **kw) -> ServiceRecord:
    return ServiceRecord(project=project, name=name, plan="startup-4", cloud="local-europe-west1", cluster=name,
                         create_time="2026-01-01T00:00:00Z", update_time="2026-01-01T00:00:00Z",
                         superuser_password="-", replication_password="-", rewind_password="-", tls_cert_pem="-",
                         tls_key_pem="-", **kw)


def project(name: str) -> ProjectRecord:
    return ProjectRecord(name=name, create_time="2026-01-01T00:00:00Z", ca_cert_pem="cert", ca_key_pem="key",
                         default_cloud="local-europe-west1")


def operation(op_id: str, pair: str = "pg-a", state: str = "running",
              create_time: str = "2026-01-01T00:00:00Z") -> OperationRecord:
    return OperationRecord(operation_id=op_id, project=P, pair=pair, kind="switchover", service=pair,
                           requested_role="active", source=pair, target=f"{pair}-dr", state=state,
                           create_time=create_time)


def test_services_are_added_once_listed_in_order_updated_and_deleted(store):
    assert store.add_service(service("pg-b")) and store.add_service(service("pg-a"))
    assert store.add_service(service("pg-a", project="other"))
    assert not store.add_service(service("pg-a"))  # taken
    assert [(s.project, s.name) for s in store.list_services()] == [("other", "pg-a"), (P, "pg-a"), (P, "pg-b")]
    assert [s.name for s in store.list_services(P)] == ["pg-a", "pg-b"]
    new = store.update_service(P, "pg-a", lambda cur: cur.model_copy(update={"message": "changed"}))
    assert new is not None and store.get_service(P, "pg-a") == new and new.message == "changed"
    assert store.update_service(P, "pg-a", lambda cur: None) == new  # None: nothing written
    assert store.update_service(P, "nope", lambda cur: cur) is None
    store.delete_service(P, "pg-a")
    assert store.get_service(P, "pg-a") is None and [s.name for s in store.list_services(P)] == ["pg-b"]


def test_a_transaction_sees_its_own_writes_and_a_raise_writes_nothing(store):
    store.add_service(service("pg-a"))

    def change_then_fail(tx):
        tx.put_service(service("pg-new"))
        tx.delete_service(P, "pg-a")
        assert [s.name for s in tx.services(P)] == ["pg-new"] and tx.service(P, "pg-a") is None
        tx.put_meta("k", "v")
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        store.transaction(change_then_fail)
    assert [s.name for s in store.list_services(P)] == ["pg-a"] and store.get_meta("k") is None


def test_projects_meta_and_integrations(store):
    assert store.add_project(project("b")) and store.add_project(project("a"))
    assert not store.add_project(project("a"))
    assert [p.name for p in store.list_projects()] == ["a", "b"] and store.get_project("b") is not None
    store.set_meta("admin_email", "x@y")
    store.set_meta("admin_email", "z@y")
    assert store.get_meta("admin_email") == "z@y" and store.get_meta("nope") is None
    made = [IntegrationRecord(integration_id=f"i{n}", project=P, source=f"s{n}", dest=f"d{n}",
                              create_time="2026-01-01T00:00:00Z") for n in (3, 1, 2)]
    for rec in made:
        store.transaction(lambda tx, rec=rec: tx.put_integration(rec))
    flipped = made[0].model_copy(update={"source": "d3", "dest": "s3"})
    store.transaction(lambda tx: tx.put_integration(flipped))
    assert store.list_integrations(P) == [flipped, made[1], made[2]]  # in the order they were created
    store.transaction(lambda tx: tx.delete_integration(P, "i1"))
    assert [i.integration_id for i in store.list_integrations(P)] == ["i3", "i2"]
    assert store.get_integration(P, "i2") == made[2] and store.get_integration(P, "i1") is None


def test_operations_never_run_again_once_ended_and_their_start_and_end_are_events(store):
    op = operation("op-1")
    assert store.put_operation(op)
    assert store.put_operation(op.model_copy(update={"message": "step 2"}))  # progress: no event
    assert store.running_operations() == [op.model_copy(update={"message": "step 2"})]
    assert store.read(lambda tx: tx.running_operation(P, "pg-a")).message == "step 2"
    ended = op.model_copy(update={"state": "failed", "finish_time": "2026-01-01T00:00:07Z", "message": "superseded"})
    assert store.put_operation(ended)
    assert not store.put_operation(op.model_copy(update={"message": "a late progress write"}))
    assert store.get_operation("op-1") == ended and store.running_operations() == []
    assert store.read(lambda tx: tx.running_operation(P, "pg-a")) is None
    assert [(e.event_type, e.event_desc) for e in store.list_events(P)] == [
        ("crdr_switchover_failed", "switchover of pair pg-a failed, in 7 s: superseded"),
        ("crdr_switchover_start", "switchover of pair pg-a started: pg-a to active (writer pg-a -> pg-a-dr)")]
    store.put_operation(operation("op-0", create_time="2025-12-31T00:00:00Z"))
    store.put_operation(operation("op-9", pair="pg-b"))
    assert [o.operation_id for o in store.list_operations(P)] == ["op-0", "op-1", "op-9"]
    assert [o.operation_id for o in store.list_operations(P, "pg-a")] == ["op-0", "op-1"]
    assert [o.operation_id for o in store.running_operations()] == ["op-0", "op-9"]
    assert store.get_operation("nope") is None


def test_events_newest_first_by_service_and_limit(store):
    for n in range(7):
        store.add_event(P, "me", "service_update", f"e{n}", service_name="pg-a" if n % 2 else "pg-b")
    assert [e.event_desc for e in store.list_events(P, limit=3)] == ["e6", "e5", "e4"]
    assert [e.event_desc for e in store.list_events(P, service_name="pg-a")] == ["e5", "e3", "e1"]
    ids = [e.id for e in store.list_events(P)]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    assert store.list_events("other") == []


def test_concurrent_read_modify_writes_from_two_stores_lose_no_update(store, store_env, tmp_path):
    """Two control-plane processes (two stores on the same state) each add 1 to the same
    service 40 times, at the same time: the result is 80."""
    other = open_store(Settings.from_env(home=tmp_path / "home"), store_env)
    store.add_service(service("pg-a", generation=0))
    rounds = 40
    errors: list[BaseException] = []

    def bump(s: Store) -> None:
        try:
            for _ in range(rounds):
                s.update_service(P, "pg-a", lambda cur: cur.model_copy(update={"generation": cur.generation + 1}))
        except BaseException as exc:  # reported below: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(s,)) for s in (store, other, store)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.close()
    assert errors == []
    assert store.get_service(P, "pg-a").generation == 3 * rounds


def test_the_api_answers_503_with_the_reason_when_the_store_gives_up(api, monkeypatch):
    def give_up(fn):
        raise StoreConflict("a store transaction met concurrent changes to what it read 20 times in a row")

    monkeypatch.setattr(api.store, "transaction", give_up)
    r = api.put("/v1/project/pgcrdr/service/pg-a/tags", json={"tags": {}})
    assert r.status_code == 503 and "20 times in a row" in r.json()["message"]


# --- etcd only ---------------------------------------------------------------------------------

def etcd_store(endpoints: list[str], **kw) -> EtcdStore:
    return EtcdStore(endpoints, prefix=f"/pgcrdr-test/{uuid.uuid4().hex}/", **kw)


def test_a_transaction_that_keeps_conflicting_gives_up_clearly_and_writes_nothing(etcd_server):
    store = etcd_store(etcd_server.endpoints, attempts=3)
    rival = EtcdStore(etcd_server.endpoints, prefix=store.prefix)
    store.add_service(service("pg-a", generation=0))
    runs = []

    def always_overtaken(tx):
        cur = tx.service(P, "pg-a")
        runs.append(cur.generation)
        # another writer changes what this transaction read before it commits
        rival.update_service(P, "pg-a", lambda c: c.model_copy(update={"generation": c.generation + 1}))
        tx.put_service(cur.model_copy(update={"message": "mine"}))

    with pytest.raises(StoreConflict, match="3 times in a row and gave up; nothing of it was written"):
        store.transaction(always_overtaken)
    assert runs == [0, 1, 2]  # each run read the state the rival left
    final = store.get_service(P, "pg-a")
    assert final.generation == 3 and final.message != "mine"
    store.close()
    rival.close()


def test_a_new_key_written_concurrently_into_a_listed_range_is_a_conflict(etcd_server):
    """A transaction that decided on a list (no running operation on the pair) is run again
    when another one adds to that list meanwhile: both cannot start an operation."""
    store = etcd_store(etcd_server.endpoints)
    rival = EtcdStore(etcd_server.endpoints, prefix=store.prefix)
    started = []

    def start_if_idle(tx):
        if tx.running_operation(P, "pg-a") is not None:
            return False
        if not started:  # the first run is overtaken by the rival's operation
            rival.put_operation(operation("rival"))
        started.append(True)
        tx.put_operation(operation("mine"))
        return True

    assert store.transaction(start_if_idle) is False
    assert [o.operation_id for o in store.running_operations()] == ["rival"]
    store.close()
    rival.close()


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "never-arrived"])
def test_a_commit_whose_answer_is_lost_is_applied_exactly_once(etcd_server, monkeypatch, applied):
    """A member dies with the commit (or says "request timed out"): whether it was applied or
    not, the change ends up in the store once, and the caller gets its result."""
    store = etcd_store(etcd_server.endpoints)
    store.add_service(service("pg-a", generation=0))
    real_txn, lost = store._gw.txn, []

    def answer_lost(compare, success, failure=None):
        if not lost:
            lost.append(True)
            if applied:
                real_txn(compare, success, failure)
            raise EtcdUnreachable("http://m0: no answer (ReadTimeout)", ambiguous=True)
        return real_txn(compare, success, failure)

    monkeypatch.setattr(store._gw, "txn", answer_lost)
    out = store.update_service(P, "pg-a", lambda cur: cur.model_copy(update={"generation": cur.generation + 1}))
    assert lost and out.generation == 1 and store.get_service(P, "pg-a").generation == 1
    assert store.update_service(P, "pg-a", lambda cur: cur.model_copy(update={"generation": 2})).generation == 2
    monkeypatch.undo()
    store.close()
    reader = EtcdStore(etcd_server.endpoints, prefix=store.prefix)
    markers, _, _ = reader._gw.range(store.prefix + "commits/", prefix_end(store.prefix + "commits/"))
    reader.close()
    assert markers == []  # a closed store leaves no commit marker behind


def test_a_snapshot_compacted_away_midway_is_read_again(etcd_server):
    store = etcd_store(etcd_server.endpoints)
    store.add_service(service("pg-a"))
    store.add_service(service("pg-b"))
    runs = []

    def read_both(tx):
        first = tx.service(P, "pg-a")
        if not runs:  # etcd forgets the revision this run reads at, between its two reads
            store.update_service(P, "pg-b", lambda cur: cur.model_copy(update={"message": "newer"}))
            _, now, _ = store._gw.range(store.prefix)
            store._gw.call("kv/compaction", {"revision": now}, writes=True)
        runs.append(first)
        return first, tx.service(P, "pg-b")

    _, second = store.read(read_both)
    assert len(runs) == 2 and second.message == "newer"
    store.close()


def test_a_three_member_cluster_keeps_serving_with_a_member_killed(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    try:
        store = etcd_store(cluster.endpoints)
        store.add_service(service("pg-a", generation=0))
        cluster.kill(0)  # the member the store used so far (its first endpoint)
        bumped = store.update_service(P, "pg-a", lambda cur: cur.model_copy(update={"generation": 1}))
        assert bumped is not None and store.get_service(P, "pg-a").generation == 1
        assert store.add_service(service("pg-b")) and [s.name for s in store.list_services(P)] == ["pg-a", "pg-b"]
        store.close()
        # a store opened now, with the dead member first in its list, works as well
        again = EtcdStore(cluster.endpoints, prefix=store.prefix)
        assert again.get_service(P, "pg-a").generation == 1
        again.close()
    finally:
        cluster.stop()


def test_no_member_answering_is_a_clear_error():
    (port,) = free_ports(1)
    with pytest.raises(StoreUnavailable, match=f"answers at none of its endpoints: http://127.0.0.1:{port}: "
                                               "cannot connect"):
        EtcdStore([f"http://127.0.0.1:{port}"])


@pytest.mark.parametrize("env, message", [
    ({"PGCRDR_STORE": "postgres"}, "PGCRDR_STORE='postgres' is not a store: use sqlite (the default) or etcd"),
    ({"PGCRDR_STORE": "etcd"}, "PGCRDR_STORE=etcd needs PGCRDR_STORE_ENDPOINTS"),
    ({"PGCRDR_STORE": "etcd", "PGCRDR_STORE_ENDPOINTS": " , "}, "PGCRDR_STORE=etcd needs PGCRDR_STORE_ENDPOINTS"),
    ({"PGCRDR_STORE": "etcd", "PGCRDR_STORE_ENDPOINTS": "http://10.0.0.1:2379,10.0.0.2"},
     "'10.0.0.2' is not an etcd client URL (http://HOST:PORT)"),
    ({"PGCRDR_STORE": "etcd", "PGCRDR_STORE_ENDPOINTS": "http://10.0.0.1:notaport"}, "is not an etcd client URL"),
    ({"PGCRDR_STORE_ENDPOINTS": "http://10.0.0.1:2379"}, "set PGCRDR_STORE=etcd to use etcd"),
    ({"PGCRDR_STORE": "etcd", "PGCRDR_STORE_ENDPOINTS": "http://10.0.0.1:2379", "PGCRDR_STORE_PREFIX": "pgcrdr"},
     "a key prefix starts and ends with '/'"),
])
def test_bad_store_settings_are_refused_naming_the_setting(env, message):
    with pytest.raises(StoreSettingsError) as err:
        StoreSettings.from_env(env)
    assert message in str(err.value)


def test_store_settings():
    assert StoreSettings.from_env({}) == StoreSettings(backend="sqlite")
    got = StoreSettings.from_env({"PGCRDR_STORE": "etcd",
                                  "PGCRDR_STORE_ENDPOINTS": " http://10.0.0.1:2379/, https://[fd00::2]:2379"})
    assert got.endpoints == ("http://10.0.0.1:2379", "https://[fd00::2]:2379") and got.prefix == "/pgcrdr/v1/"


STORE_LINE = 'store = ["http://10.77.0.10:2379", "http://10.77.0.20:2379", "http://[fd00::30]:2379"]'
# test_topology's three hosts, with a second control host and the etcd they share (line 3)
TWO_CONTROL_HOSTS = GOOD.replace("api_port = 25000\n", f"api_port = 25000\n{STORE_LINE}\n").replace(
    "[[regions]]", '[[control.hosts]]\nname = "control-2"\naddress = "10.77.0.20"\n\n[[regions]]', 1)


def test_a_topology_names_the_control_planes_etcd_and_the_environment_may_override_it():
    topology = parse_topology(TWO_CONTROL_HOSTS, "deploy.toml")
    endpoints = ("http://10.77.0.10:2379", "http://10.77.0.20:2379", "http://[fd00::30]:2379")
    assert topology.store_endpoints == endpoints
    assert Settings.from_topology(topology, home="/tmp/unused", control_host="control-2").store_endpoints == endpoints
    from_topology = StoreSettings.from_env({}, topology_endpoints=endpoints)
    assert from_topology == StoreSettings(backend="etcd", endpoints=endpoints)
    assert StoreSettings.from_env({"PGCRDR_STORE": "sqlite"}, topology_endpoints=endpoints).backend == "sqlite"
    chosen = StoreSettings.from_env({"PGCRDR_STORE": "etcd", "PGCRDR_STORE_ENDPOINTS": "http://127.0.0.1:2379"},
                                    topology_endpoints=endpoints)
    assert chosen.endpoints == ("http://127.0.0.1:2379",)


@pytest.mark.parametrize("store_line, message", [
    ("", "deploy.toml: several control hosts keep one state in etcd: list its client URLs in [control] as store = "),
    ('store = ["etcd.example:2379"]', "deploy.toml:3: store: 'etcd.example:2379' is not an etcd client URL"),
    ('store = ["http://etcd.example:2379"]', "deploy.toml:3: store: 'http://etcd.example:2379' must name its host "
                                             "by IP address"),
    ('store = "http://10.77.0.10:2379"', "deploy.toml:3: store must be a list of etcd client URLs"),
])
def test_a_wrong_store_in_a_topology_is_refused_naming_the_line(store_line, message):
    with pytest.raises(TopologyError) as err:
        parse_topology(TWO_CONTROL_HOSTS.replace(STORE_LINE, store_line), "deploy.toml")
    assert str(err.value).startswith(message), str(err.value)


def test_leases_over_the_gateway_bind_keys_renew_and_expire(etcd_server):
    """What a leader key and a writer's lease are made of: a key put with a lease lives while
    the lease is renewed and is gone once it is revoked or expires."""
    import time as _time

    from pgcrdr.etcdv3 import EtcdGateway

    gw = EtcdGateway(etcd_server.endpoints)
    key = f"/pgcrdr-test/{uuid.uuid4().hex}/lease"
    try:
        lease = gw.lease_grant(2)
        gw.put(key, "holder", lease=lease)
        assert [kv.value for kv in gw.range(key)[0]] == ["holder"]
        assert gw.lease_keepalive(lease) == 2
        gw.lease_revoke(lease)
        assert gw.range(key)[0] == []
        gw.lease_revoke(lease)  # again: not an error
        short = gw.lease_grant(1)
        gw.put(key, "short", lease=short)
        deadline = _time.monotonic() + 10
        while gw.range(key)[0] and _time.monotonic() < deadline:
            _time.sleep(0.2)
        assert gw.range(key)[0] == [] and gw.lease_keepalive(short) == 0  # expired: renewing says so
    finally:
        gw.close()
