"""The region agent against real processes: etcd, Patroni, PostgreSQL 15 and HAProxy.

Reads like the runbook: create a 1-node and a 2-node cluster, use them through their endpoints
over TLS, lose the writer node of the 2-node cluster, power a cluster off and on, delete both.
Clusters are shared between tests in file order (solo: 1 node, duo: 2 nodes).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pgcrdr.agent.layout import RegionLayout
from pgcrdr.processes import is_running, postmaster_pid, processes_under, read_pid
from tests.component.conftest import Agent, make_spec, wait_for

pytestmark = pytest.mark.component

READY_TIMEOUT = 90
FAILOVER_TIMEOUT = 60  # Patroni ttl is 20 s
# A lost synchronous standby stalls commits until Patroni drops it from synchronous_standby_names:
# its walsender ends at once when the node's sockets close, then one loop_wait (1 s) and Patroni's
# own 2 s wait (measured 1-3 s here); a silently vanished host is bounded by its member key's ttl.
SYNC_DROP_BOUND_S = 10


def dsn(port: int, sslmode: str = "require", dbname: str = "defaultdb") -> str:
    return (f"host=127.0.0.1 port={port} user=avnadmin password=admin-pw dbname={dbname} "
            f"sslmode={sslmode} connect_timeout=3")


def wait_ready(agent: Agent, cluster: str, timeout: float = READY_TIMEOUT, generation: int | None = None):  # noqa: ANN201
    def ready():  # noqa: ANN202
        st = agent.status(cluster)
        if generation is not None and st.generation != generation:
            return False
        return st if st.ready else False

    try:
        return wait_for(f"cluster {cluster} to be ready", ready, timeout)
    except AssertionError as exc:
        st = agent.status(cluster)
        raise AssertionError(f"{exc}\nstatus: {st.model_dump_json(indent=1)}\nagent log:\n{agent.log_tail()}") from None


@dataclass
class Writer:
    """Writes ids in a loop through an endpoint and logs each outcome: ok (commit acknowledged),
    failed (never sent: no connection) or unknown (the connection broke while in flight)."""

    port: int
    table: str = "acked"
    interval: float = 0.02  # between writes
    ok: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    ok_at: list[float] = field(default_factory=list)  # monotonic time of each acknowledgement

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        next_id = 1
        while not self.stop.is_set():
            i, next_id = next_id, next_id + 1
            if conn is None:
                try:
                    conn = psycopg.connect(dsn(self.port), autocommit=True)
                except psycopg.Error:
                    self.failed.append(i)
                    time.sleep(0.2)
                    continue
            try:
                conn.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (i,))  # noqa: S608
                self.ok.append(i)
                self.ok_at.append(time.monotonic())
            except psycopg.Error:
                self.unknown.append(i)
                conn.close()
                conn = None
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "writer thread did not stop"

    def longest_pause(self, after: float) -> float:
        times = [t for t in self.ok_at if t >= after]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@pytest.fixture(scope="module")
def clusters(agent: Agent, tls: dict[str, str]) -> dict[str, dict]:
    """PUT both clusters at once; tests wait for the one they use."""
    specs = {"solo": make_spec("solo", 1, tls), "duo": make_spec("duo", 2, tls),
             # PostgreSQL cannot start: the agent must say so instead of waiting forever
             "broken": make_spec("broken", 1, tls, pg_parameters={"shared_preload_libraries": "no_such_lib"})}
    with agent.http() as c:
        for name, spec in specs.items():
            t0 = time.monotonic()
            r = c.put(f"/clusters/{name}", json=spec)
            assert r.status_code == 200, r.text
            assert time.monotonic() - t0 < 5, "PUT must record intent and answer at once"
            body = r.json()
            assert body["cluster"] == name and body["ready"] is False and body["primary"]["port"] > 0
    return specs


def test_bad_requests_get_4xx_with_a_json_message(agent: Agent, tls: dict[str, str]) -> None:
    spec = make_spec("badone", 1, tls)
    with agent.http(token="") as c:
        r = c.get("/health")
        assert r.status_code == 401 and "token" in r.json()["message"]
    with agent.http(token="wrong") as c:
        assert c.put("/clusters/badone", json=spec).status_code == 401
    with agent.http() as c:
        cases = [
            (c.put("/clusters/badone", json={**spec, "node_count": 5}), 422, "node_count"),
            (c.put("/clusters/badone", json={k: v for k, v in spec.items() if k != "tls"}), 422, "tls"),
            (c.put("/clusters/badone", content=b"{not json", headers={"content-type": "application/json"}),
             422, "invalid"),
            (c.put("/clusters/other", json=spec), 400, "differs from the URL"),
            (c.put("/clusters/badone", json={**spec, "tls": {**tls, "cert_pem": "garbage"}}), 400, "cert_pem"),
            (c.put("/clusters/badone", json={**spec, "users": [{"username": "postgres", "password": "x"}]}),
             400, "reserved"),
            (c.put("/clusters/Bad_Name", json={**spec, "cluster": "Bad_Name"}), 422, "cluster"),
            (c.get("/clusters/nope"), 404, "not found"),
            (c.delete("/clusters/nope"), 404, "not found"),
            (c.post("/clusters/nope/nodes/nope-1/kill"), 404, "not found"),
        ]
        for resp, code, words in cases:
            assert resp.status_code == code, (resp.request.url, resp.text)
            assert words in resp.json()["message"], resp.text
        # nothing of the refused requests was recorded
        assert c.get("/clusters/badone").status_code == 404
        assert c.get("/clusters").json() == {"clusters": []}


def test_one_node_cluster_becomes_ready_and_serves_over_tls(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "solo")
    assert st.phase == "running" and st.message is None
    [node] = st.nodes
    assert node.name == "solo-1" and node.role == "primary" and node.state == "running" and node.lsn
    with psycopg.connect(dsn(st.primary.port), autocommit=True) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 100) g")
        assert conn.execute("SELECT count(*), max(note) FROM kept").fetchone() == (100, "row 99")
        assert conn.execute("SELECT rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (True, True)
        assert conn.execute("SELECT data_checksums = 'on' FROM (SELECT current_setting('data_checksums') "
                            "AS data_checksums) s").fetchone() == (True,)
    # a 1-node cluster still answers on its replica endpoint (the writer is the fallback)
    with psycopg.connect(dsn(st.replica.port)) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (100,)


def test_connection_without_tls_is_refused(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "solo")
    with pytest.raises(psycopg.OperationalError, match="no encryption|pg_hba"):
        psycopg.connect(dsn(st.primary.port, sslmode="disable")).close()
    node = st.nodes[0]
    with pytest.raises(psycopg.OperationalError, match="no encryption|pg_hba"):
        psycopg.connect(dsn(node.pg_port, sslmode="disable")).close()


def test_two_node_cluster_streams_to_its_replica(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "duo")
    roles = sorted(n.role for n in st.nodes)
    assert roles == ["primary", "replica"], st
    assert all(n.state == "running" for n in st.nodes)
    with psycopg.connect(dsn(st.primary.port), autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    replica = next(n for n in st.nodes if n.role == "replica")
    with psycopg.connect(dsn(replica.pg_port), autocommit=True) as conn:
        wait_for("the replica to replay the CREATE TABLE",
                 lambda: conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0], 10)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert conn.execute("SELECT to_regclass('acked') IS NOT NULL").fetchone() == (True,)
    with psycopg.connect(dsn(st.replica.port)) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_two_node_cluster_replicates_synchronously_inside_the_region(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "duo")
    writer = next(n for n in st.nodes if n.role == "primary")
    standby = next(n for n in st.nodes if n.role == "replica")
    # ready means Patroni recorded the synchronous standby (/sync), so a failover may promote it
    assert st.sync_standbys == [standby.name] and standby.sync_state == "sync" and writer.sync_state is None
    assert st.message is None
    superuser = dsn(writer.pg_port).replace("user=avnadmin password=admin-pw", "user=postgres password=su-duo")
    with psycopg.connect(superuser, autocommit=True) as conn:  # pg_stat_replication in full
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert conn.execute("SHOW synchronous_standby_names").fetchone() == (f'"{standby.name}"',)
        assert conn.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall() == [
            (standby.name, "sync")]
    # the single-node cluster stays as it was
    solo = wait_ready(agent, "solo")
    assert solo.sync_standbys == [] and solo.message is None
    with psycopg.connect(dsn(solo.primary.port), autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone() == ("",)


def test_standby_node_loss_keeps_writes_going_and_reports_degraded_durability(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "duo")
    standby = next(n for n in st.nodes if n.role == "replica")
    with psycopg.connect(dsn(st.primary.port), autocommit=True) as conn:
        conn.execute("CREATE TABLE acked_standby_loss (id int PRIMARY KEY)")
    writer = Writer(st.primary.port, "acked_standby_loss").start()
    try:
        wait_for("the writer to commit some rows", lambda: len(writer.ok) >= 20, 15)
        with agent.http() as c:
            r = c.post(f"/clusters/duo/nodes/{standby.name}/kill", params={"restart_after": 20})
        assert r.status_code == 200, r.text
        killed_at = time.monotonic()
        ok_before = len(writer.ok)
        wait_for("writes to go on without the synchronous standby",
                 lambda: len(writer.ok) > ok_before + 20, SYNC_DROP_BOUND_S + 5)
        resumed_s = writer.ok_at[ok_before] - killed_at if len(writer.ok_at) > ok_before else None

        def degraded():  # noqa: ANN202
            s = agent.status("duo")
            return s if s.message and "durability degraded" in s.message else False

        deg = wait_for("the status to report degraded durability", degraded, 10)
        assert deg.sync_standbys == [] and deg.phase == "running" and not deg.ready
        assert time.monotonic() - killed_at < 19, "degraded must show while the standby is down"
        # the agent restarts the node after restart_after; it becomes the synchronous standby again
        back = wait_ready(agent, "duo", timeout=READY_TIMEOUT)
        healthy_s = time.monotonic() - killed_at
        ok_back = len(writer.ok)
        wait_for("writes to go on with the standby back", lambda: len(writer.ok) > ok_back + 20, 15)
    finally:
        writer.finish()
    pause = writer.longest_pause(after=killed_at - 1)
    assert back.message is None and back.sync_standbys == [standby.name], back
    assert not writer.failed and not writer.unknown, (writer.failed, writer.unknown)
    assert pause < SYNC_DROP_BOUND_S, f"writes stalled {pause:.1f}s after the synchronous standby was lost"
    print(f"standby lost: first commit after {resumed_s:.2f}s, longest write pause {pause:.2f}s; "
          f"synchronous again {healthy_s:.1f}s after the kill (restart_after 20 s)")


def test_writer_node_loss_fails_over_and_keeps_every_acknowledged_write(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "duo")
    old = next(n for n in st.nodes if n.role == "primary")
    other = next(n for n in st.nodes if n.role == "replica")
    writer = Writer(st.primary.port).start()
    try:
        wait_for("the writer to commit some rows", lambda: len(writer.ok) >= 20, 15)
        with agent.http() as c:
            r = c.post(f"/clusters/duo/nodes/{old.name}/kill", params={"restart_after": 35})
        assert r.status_code == 200, r.text
        killed_at = time.monotonic()
        assert len(r.json()["killed_pids"]) >= 2  # Patroni and the postmaster
        ok_before = len(writer.ok)

        def new_writer() -> bool:
            s = agent.status("duo")
            return any(n.name == other.name and n.role == "primary" and n.state == "running" for n in s.nodes)

        wait_for(f"{other.name} to take over as writer", new_writer, FAILOVER_TIMEOUT)
        failover_s = time.monotonic() - killed_at
        # alone until the old writer is back: said on the status
        wait_for("degraded durability to be reported", lambda: "durability degraded" in (
            agent.status("duo").message or ""), 10)
        wait_for("writes through the primary endpoint to succeed again",
                 lambda: len(writer.ok) > ok_before + 20, 20)
    finally:
        writer.finish()
    with psycopg.connect(dsn(st.primary.port)) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (other.pg_port,)
        present = {r[0] for r in conn.execute("SELECT id FROM acked")}
    lost = sorted(set(writer.ok) - present)
    assert not lost, f"acknowledged writes lost after failover: {lost[:20]}"
    assert not set(writer.failed) & present, "ids never sent are present"
    print(f"failover took {failover_s:.1f}s; ok={len(writer.ok)} failed={len(writer.failed)} "
          f"unknown={len(writer.unknown)}")
    # the killed node is not restarted before restart_after, then rejoins as a replica
    if time.monotonic() - killed_at < 33:
        assert agent.status("duo").nodes[[n.name for n in st.nodes].index(old.name)].state == "stopped"
    st2 = wait_ready(agent, "duo", timeout=READY_TIMEOUT)
    back = next(n for n in st2.nodes if n.name == old.name)
    assert back.role == "replica" and back.state == "running"
    assert st2.sync_standbys == [old.name] and back.sync_state == "sync" and st2.message is None
    assert time.monotonic() - killed_at >= 35


def test_postgres_that_cannot_start_is_reported_not_hidden(agent: Agent, clusters: dict) -> None:
    def reported():  # noqa: ANN202
        st = agent.status("broken")
        return st if st.phase == "failed" and st.message else False

    st = wait_for("the broken cluster to report why it cannot start", reported, 60)
    assert not st.ready and st.nodes[0].state == "failed"
    assert "PostgreSQL failed to start on broken-1" in st.message and "no_such_lib" in st.message, st.message


def test_power_off_and_on_keeps_the_data(agent: Agent, clusters: dict, tls: dict[str, str]) -> None:
    st = wait_ready(agent, "solo")
    with agent.http() as c:
        r = c.put("/clusters/solo", json=make_spec("solo", 1, tls, superuser_password="changed"))
        assert r.status_code == 409 and "cannot be changed" in r.json()["message"]
    lay = RegionLayout(agent.region_dir).cluster("solo")
    data_dir = lay.data_dir("solo-1")
    with agent.http() as c:
        r = c.put("/clusters/solo", json=make_spec("solo", 1, tls, powered=False, generation=2))
        assert r.status_code == 200, r.text
    wait_for("solo to be stopped", lambda: agent.status("solo").phase == "stopped", 60)
    assert postmaster_pid(data_dir) is None
    assert not is_running(read_pid(lay.patroni_pid("solo-1")))
    assert (data_dir / "PG_VERSION").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(st.primary.port)).close()
    with agent.http() as c:
        r = c.put("/clusters/solo", json=make_spec("solo", 1, tls, powered=True, generation=3))
        assert r.status_code == 200, r.text
    wait_ready(agent, "solo", generation=3)
    with psycopg.connect(dsn(st.primary.port)) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (100,)


def test_growing_and_shrinking_a_cluster(agent: Agent, clusters: dict, tls: dict[str, str]) -> None:
    st = wait_ready(agent, "solo")
    with agent.http() as c:
        assert c.put("/clusters/solo", json=make_spec("solo", 2, tls, generation=4)).status_code == 200
    st = wait_ready(agent, "solo", generation=4)
    assert sorted((n.name, n.role) for n in st.nodes) == [("solo-1", "primary"), ("solo-2", "replica")]
    with psycopg.connect(dsn(st.nodes[1].pg_port)) as conn:
        assert conn.execute("SELECT pg_is_in_recovery(), count(*) FROM kept").fetchone() == (True, 100)
    with agent.http() as c:
        assert c.put("/clusters/solo", json=make_spec("solo", 1, tls, generation=5)).status_code == 200
    st = wait_ready(agent, "solo", generation=5)
    assert [n.name for n in st.nodes] == ["solo-1"]
    lay = RegionLayout(agent.region_dir).cluster("solo")
    wait_for("solo-2's files to be removed", lambda: not lay.node_dir("solo-2").exists(), 10)
    assert not processes_under(lay.node_dir("solo-2"))


def test_agent_restart_stops_children_and_resumes_with_the_data(agent: Agent, clusters: dict) -> None:
    st = wait_ready(agent, "solo")
    wait_ready(agent, "duo")
    assert agent.stop() == 0, agent.log_tail()
    left = processes_under(agent.region_dir)
    assert not left, f"agent exited leaving processes {left}"
    agent.start()
    # Resumed with nothing running: held (nothing starts) until the control plane PUTs the spec
    # again, as its reconciler does for a held cluster; here, the spec the agent persisted.
    for name in ("solo", "duo"):
        assert agent.status(name).held, agent.status(name)
        spec = RegionLayout(agent.region_dir).cluster(name).spec_file.read_text()
        with agent.http() as c:
            r = c.put(f"/clusters/{name}", content=spec, headers={"content-type": "application/json"})
            assert r.status_code == 200 and not r.json()["held"], r.text
    wait_ready(agent, "solo")
    wait_ready(agent, "duo")
    with psycopg.connect(dsn(st.primary.port)) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (100,)


def test_agent_killed_hard_adopts_its_running_processes(agent: Agent, clusters: dict) -> None:
    wait_ready(agent, "duo")
    run = agent.region_dir / "run"
    before = {f.name: read_pid(f) for f in run.glob("*.pid")}
    agent.proc.kill()  # SIGKILL: its children keep running
    agent.proc.wait(timeout=10)
    assert all(is_running(p) for p in before.values()), before
    agent.start()
    wait_ready(agent, "duo")
    wait_ready(agent, "solo")
    after = {f.name: read_pid(f) for f in run.glob("*.pid")}
    assert after == before, "the restarted agent must adopt running processes, not start new ones"


def test_delete_leaves_no_process_and_no_file(agent: Agent, clusters: dict) -> None:
    for name in ("solo", "duo", "broken"):
        lay = RegionLayout(agent.region_dir).cluster(name)
        assert lay.dir.exists()
        t0 = time.monotonic()
        with agent.http() as c:
            r = c.delete(f"/clusters/{name}")
            assert r.status_code == 200, r.text
            assert c.get(f"/clusters/{name}").status_code == 404
        assert time.monotonic() - t0 < 60
        assert not lay.dir.exists(), f"{lay.dir} still exists"
        assert not processes_under(lay.dir), f"processes of {name} still run"
        assert not list(Path(agent.region_dir / "run").glob(f"{name}*.pid"))
    with agent.http() as c:
        assert c.get("/clusters").json() == {"clusters": []}
        assert c.get("/health").json()["clusters"] == 0
