"""CRDR primitives of two real region agents (real etcd, Patroni, PostgreSQL 15, HAProxy).

Reads like the runbook, tests in file order sharing two 1-node clusters: ``pga`` in region
ct-a (the primary service) and ``pgb`` in region ct-b (its recovery copy):

1. pgb is created as a standby cluster of pga and streams; it refuses writes. The sessions
   holding a transaction open on pga's writer are listed, oldest first.
2. planned switch pga -> pgb under a writer loop through the endpoints: checkpoint, demote,
   prove pgb holds the final LSN, promote; pga follows pgb; no acknowledged write lost.
3. failover with a lost tail: pga is cut off, pgb commits rows pga never gets, pgb is fenced,
   pga promoted; preserve (a polled job) keeps pgb's old data and lists its divergent commits;
   pgb powered on as a standby of pga is pg_rewound and streams.
4. region outage of ct-b, agent restarted: its cluster is held (nothing starts) until a PUT.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from pgcrdr.agentapi.client import AgentClient
from pgcrdr.agent.layout import RegionLayout
from pgcrdr.agentapi.models import ClusterStatus, LsnInfo, PreserveRequest, PreserveResult
from pgcrdr.agentapi.sessions import describe_sessions
from pgcrdr.agent.wal import controldata
from pgcrdr.processes import postmaster_pid, processes_under
from pgcrdr.agentapi.lsn import parse_lsn
from tests.component.conftest import Agent, make_spec, region_agents, wait_for

pytestmark = pytest.mark.component

READY_TIMEOUT = 90
SHARED = {"superuser_password": "su-pair", "replication_password": "repl-pair", "rewind_password": "rw-pair"}
TIMINGS: dict[str, float] = {}
PGB_NODES = 2  # the recovery copy has a replica of its own: it follows the standby leader


def dsn(port: int, dbname: str = "defaultdb", timeout: int = 3) -> str:
    return f"host=127.0.0.1 port={port} user=avnadmin password=admin-pw dbname={dbname} sslmode=prefer " \
           f"connect_timeout={timeout}"


@dataclass
class Pair:
    a: Agent
    b: Agent
    tls: dict[str, str]
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def put(self, agent: Agent, spec: dict[str, Any]) -> ClusterStatus:
        with agent.http() as c:
            r = c.put(f"/clusters/{spec['cluster']}", json=spec)
        assert r.status_code == 200, r.text
        self.specs[spec["cluster"]] = spec
        return ClusterStatus.model_validate(r.json())

    def post(self, agent: Agent, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> dict:
        with agent.http() as c:
            r = c.post(path, json=body or {})
        assert r.status_code == expect, f"POST {path}: {r.status_code} {r.text}\n{agent.log_tail()}"
        return r.json()

    def get(self, agent: Agent, path: str, expect: int = 200) -> dict:
        with agent.http() as c:
            r = c.get(path)
        assert r.status_code == expect, f"GET {path}: {r.status_code} {r.text}\n{agent.log_tail()}"
        return r.json()

    def client(self, agent: Agent) -> AgentClient:
        return AgentClient(agent.settings.agent_url(agent.region), agent.token, timeout=30)

    def lsn(self, agent: Agent, cluster: str) -> LsnInfo:
        with agent.http() as c:
            r = c.get(f"/clusters/{cluster}/lsn")
        assert r.status_code == 200, r.text
        return LsnInfo.model_validate(r.json())


def wait_ready(agent: Agent, cluster: str, timeout: float = READY_TIMEOUT, standby: bool | None = None,
               generation: int | None = None) -> ClusterStatus:
    def ready() -> ClusterStatus | bool:
        st = agent.status(cluster)
        if standby is not None and st.standby != standby:
            return False
        if generation is not None and st.generation != generation:
            return False
        return st if st.ready else False

    try:
        return wait_for(f"cluster {cluster} to be ready", ready, timeout)
    except AssertionError as exc:
        st = agent.status(cluster)
        raise AssertionError(f"{exc}\nstatus: {st.model_dump_json(indent=1)}\nagent log:\n{agent.log_tail()}") from None


def source(agent: Agent, cluster: str, slot: str) -> dict[str, Any]:
    """The standby_of of a cluster following ``cluster``: its region's primary endpoint."""
    st = agent.status(cluster)
    return {"host": st.primary.host, "port": st.primary.port, "primary_slot_name": slot}


@pytest.fixture(scope="module")
def pair(tls: dict[str, str]) -> Iterator[Pair]:
    with region_agents(["ct-a", "ct-b"]) as (a, b):
        yield Pair(a=a, b=b, tls=tls)


@dataclass
class SwitchingWriter:
    """Writes ids through the primary endpoints of both regions, like a client of the Service
    URI: stays on the endpoint that works, tries the other one when it fails. Each id is ok
    (commit acknowledged, with its time), failed (never sent) or unknown (broke in flight)."""

    ports: list[int]
    ok: list[tuple[int, float]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> SwitchingWriter:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        which, next_id = 0, 1
        while not self.stop.is_set():
            i, next_id = next_id, next_id + 1
            if conn is None:
                try:
                    conn = psycopg.connect(dsn(self.ports[which], timeout=2), autocommit=True)
                except psycopg.Error:
                    self.failed.append(i)
                    which = 1 - which
                    time.sleep(0.005)
                    continue
            try:
                conn.execute("INSERT INTO acked (id) VALUES (%s)", (i,))
                self.ok.append((i, time.monotonic()))
            except psycopg.Error:
                self.unknown.append(i)
                conn.close()
                conn = None
                which = 1 - which
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "writer thread did not stop"

    def longest_pause(self) -> float:
        times = [t for _, t in self.ok]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def ids(port: int, table: str = "acked") -> set[int]:
    with psycopg.connect(dsn(port)) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {table}")}  # noqa: S608


def test_standby_cluster_in_another_region_streams_and_refuses_writes(pair: Pair) -> None:
    a = pair.put(pair.a, make_spec("pga", 1, pair.tls, permanent_slots=["crdr_b"], **SHARED))
    a = wait_ready(pair.a, "pga", standby=False)
    assert a.lsn is not None and a.lsn.in_recovery is False and a.lsn.current_lsn
    with psycopg.connect(dsn(a.primary.port), autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO notes SELECT g, 'from a' FROM generate_series(1, 50) g")
        wait_for("the permanent slot for the other region on the writer", lambda: conn.execute(
            "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'crdr_b'").fetchone() == ("physical",), 10)
    t0 = time.monotonic()
    pair.put(pair.b, make_spec("pgb", PGB_NODES, pair.tls, standby_of=source(pair.a, "pga", "crdr_b"),
                               permanent_slots=["crdr_a"], **SHARED))
    b = wait_ready(pair.b, "pgb", standby=True, timeout=120)
    TIMINGS["standby_bootstrap_s"] = time.monotonic() - t0
    assert b.standby and b.message is None, b
    assert sorted(n.role for n in b.nodes) == ["replica", "standby_leader"], b
    # a standby cluster has no synchronous standby (Patroni ignores synchronous_mode there)
    assert b.sync_standbys == [] and all(n.sync_state is None for n in b.nodes), b
    assert b.lsn is not None and b.lsn.in_recovery
    with psycopg.connect(dsn(a.primary.port), autocommit=True) as conn:
        conn.execute("INSERT INTO notes VALUES (51, 'after the copy')")
        want = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    wait_for("pgb to replay pga's last write",
             lambda: parse_lsn(pair.lsn(pair.b, "pgb").replay_lsn or "0/0") >= parse_lsn(want), 20)
    with psycopg.connect(dsn(b.replica.port), autocommit=True) as conn:
        # the replica endpoint reaches pgb's own replica, which follows pgb's standby leader
        wait_for("pgb's replica to replay pga's last write", lambda: conn.execute(
            "SELECT count(*), max(note) FROM notes").fetchone() == (51, "from a"), 10)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    # refuses writes: on every node, and its primary endpoint reaches no server at all
    for n in b.nodes:
        with psycopg.connect(dsn(n.pg_port), autocommit=True) as conn:
            wait_for(f"{n.name} to replay the last write", lambda c=conn: c.execute(
                "SELECT count(*) FROM notes").fetchone() == (51,), 10)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO notes VALUES (99, 'must fail')")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(b.primary.port, timeout=2)).close()
    # what a DCS-less restart would need: the standby's role in its own DCS is visible in status
    with pair.b.http() as c:
        assert c.get("/clusters/pgb").json()["standby"] is True
    print(f"standby cluster bootstrapped and ready in {TIMINGS['standby_bootstrap_s']:.1f}s")


def test_sessions_holding_a_transaction_on_the_writer_are_listed_oldest_first(pair: Pair) -> None:
    port = pair.a.status("pga").primary.port
    with psycopg.connect(dsn(port) + " application_name=ct-holder") as old, \
            psycopg.connect(dsn(port) + " application_name=ct-younger") as young, \
            psycopg.connect(dsn(port) + " application_name=ct-idle") as idle:
        old_pid = old.execute("SELECT pg_backend_pid()").fetchone()[0]  # psycopg opened a transaction
        old.execute("SELECT count(*) FROM notes")
        time.sleep(1.5)
        young_pid = young.execute("SELECT pg_backend_pid()").fetchone()[0]
        idle.autocommit = True
        idle_pid = idle.execute("SELECT pg_backend_pid()").fetchone()[0]  # no transaction left open
        t0 = time.monotonic()
        client = pair.client(pair.a)
        try:
            info = client.sessions("pga")
        finally:
            client.close()
        asked_s = time.monotonic() - t0
    pids = [s.pid for s in info.sessions]
    assert info.node == "pga-1" and not info.in_recovery, info
    assert old_pid in pids and young_pid in pids and idle_pid not in pids, info
    assert pids.index(old_pid) < pids.index(young_pid), "the oldest transaction comes first"
    held = info.sessions[pids.index(old_pid)]
    assert held.usename == "avnadmin" and held.application_name == "ct-holder", held
    assert held.state == "idle in transaction" and held.query == "SELECT count(*) FROM notes", held
    assert held.xact_age_s is not None and 1.4 <= held.xact_age_s <= 1.5 + asked_s + 5, held
    sentence = describe_sessions(info, limit=1)
    assert sentence.startswith(f"held by pid {old_pid} (user avnadmin, application ct-holder, transaction open "), \
        sentence
    print(f"sessions: {describe_sessions(info)}")


def test_planned_switch_a_to_b_loses_no_acknowledged_write(pair: Pair) -> None:
    a, b = pair.a.status("pga"), pair.b.status("pgb")
    writer = SwitchingWriter([a.primary.port, b.primary.port]).start()
    try:
        wait_for("the writer to commit on pga", lambda: len(writer.ok) >= 30, 15)
        t0 = time.monotonic()
        pair.post(pair.a, "/clusters/pga/checkpoint")
        demoted = pair.post(pair.a, "/clusters/pga/demote",
                            {"standby_of": source(pair.b, "pgb", "crdr_a"), "timeout": 20})
        final = parse_lsn(demoted["final_lsn"])
        # answered once the shutdown checkpoint is in pg_control (the postmaster may still be
        # finishing its walsenders and archiver): the writer writes no more from then on
        data_a = RegionLayout(pair.a.region_dir).cluster("pga").data_dir(demoted["node"])
        assert controldata(pair.a.settings.pg_bin_dir, data_a).state == "shut down"

        # the agent waits on its side until pgb holds the final LSN (at most `wait` seconds)
        held = pair.client(pair.b).lsn("pgb", timeout=12, at_least=demoted["final_lsn"], wait=10)
        assert parse_lsn(held.receive_lsn or "0/0") >= final, (held, demoted)
        proven = time.monotonic()
        promoted = pair.post(pair.b, "/clusters/pgb/promote", {"timeout": 20})
        switch_s = time.monotonic() - t0
        ok_at_promotion = len(writer.ok)
        wait_for("writes to land on pgb", lambda: len(writer.ok) > ok_at_promotion + 30, 20)
        # idempotent: asking again changes nothing and answers the same
        again = pair.post(pair.a, "/clusters/pga/demote", {"standby_of": source(pair.b, "pgb", "crdr_a")})
        assert again == demoted
        assert pair.post(pair.b, "/clusters/pgb/promote", {})["timeline"] == promoted["timeline"]
    finally:
        writer.finish()
    assert promoted["timeline"] == 2 and parse_lsn(promoted["switch_lsn"]) >= final, (demoted, promoted)
    present = ids(b.primary.port)
    lost = sorted({i for i, _ in writer.ok} - present)
    assert not lost, f"acknowledged writes lost in the switch: {lost[:20]}"
    assert not set(writer.failed) & present, "ids never sent are present"
    pause = writer.longest_pause()
    TIMINGS.update(writer_down_s=demoted["writer_down_s"], promoted_s=promoted["promoted_s"],
                   write_pause_s=pause, switch_s=switch_s, prove_s=proven - t0)
    print(f"planned switch: writer down after {demoted['writer_down_s']:.3f}s (final LSN {demoted['final_lsn']}), "
          f"final LSN proven on pgb at {proven - t0:.3f}s, promoted in {promoted['promoted_s']:.3f}s "
          f"(switch at {promoted['switch_lsn']}, timeline {promoted['timeline']}), whole sequence {switch_s:.3f}s; "
          f"longest write pause through the endpoints {pause * 1000:.0f} ms; ok={len(writer.ok)} "
          f"failed={len(writer.failed)} unknown={len(writer.unknown)}")
    # pga comes back as a standby of pgb and follows it
    st = wait_ready(pair.a, "pga", standby=True, timeout=60)
    assert st.nodes[0].role == "standby_leader" and st.standby
    with psycopg.connect(dsn(b.primary.port), autocommit=True) as conn:
        conn.execute("INSERT INTO notes VALUES (100, 'written in b')")
        want = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    wait_for("pga to replay pgb's write",
             lambda: parse_lsn(pair.lsn(pair.a, "pga").replay_lsn or "0/0") >= parse_lsn(want), 20)
    with psycopg.connect(dsn(st.replica.port)) as conn:
        assert conn.execute("SELECT note FROM notes WHERE id = 100").fetchone() == ("written in b",)
        assert not {i for i, _ in writer.ok} - {r[0] for r in conn.execute("SELECT id FROM acked")}
    # pgb, promoted from a standby cluster, ends with its own synchronous standby in place (Patroni
    # applies synchronous_mode at the promotion); the other region's walsender stays asynchronous
    nb = wait_ready(pair.b, "pgb", standby=False)
    b_writer = next(n for n in nb.nodes if n.role == "primary")
    b_standby = next(n for n in nb.nodes if n.role == "replica")
    assert nb.sync_standbys == [b_standby.name] and b_standby.sync_state == "sync", nb
    superuser = dsn(b_writer.pg_port).replace("user=avnadmin password=admin-pw", "user=postgres password=su-pair")
    with psycopg.connect(superuser, autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone() == (f'"{b_standby.name}"',)
        rows = dict(conn.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall())
    assert rows == {b_standby.name: "sync", "pga-1": "async"}, rows


def test_fence_promote_preserve_and_rewind_the_old_writer(pair: Pair) -> None:
    b = pair.b.status("pgb")
    # Cut pga off (point it at a dead address) so pgb's next commits never reach it.
    pair.post(pair.a, "/clusters/pga/demote", {"standby_of": {"host": "127.0.0.1", "port": 9, "primary_slot_name":
                                                              "crdr_a"}, "timeout": 10})
    wait_for("pga to stop streaming", lambda: pair.a.status("pga").nodes[0].role == "standby_leader"
             and not pair.a.status("pga").ready, 20)
    with psycopg.connect(dsn(b.primary.port), autocommit=True) as conn:
        for k in range(5):
            conn.execute("INSERT INTO notes VALUES (%s, 'lost tail')", (200 + k,))
        tail_end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    fenced = pair.post(pair.b, "/clusters/pgb/fence", {"standby_of": source(pair.a, "pga", "crdr_b")})
    assert fenced["killed_pids"] and parse_lsn(fenced["last_lsn"]) >= parse_lsn(tail_end), fenced
    lay_b = RegionLayout(pair.b.region_dir).cluster("pgb")
    assert all(postmaster_pid(lay_b.data_dir(f"pgb-{i}")) is None for i in range(1, PGB_NODES + 1))
    st = wait_for("pgb to show as stopped", lambda: (s := pair.b.status("pgb")).phase == "stopped" and s, 20)
    assert st.standby and not st.ready
    # fencing again is harmless
    assert pair.post(pair.b, "/clusters/pgb/fence", {"standby_of": source(pair.a, "pga", "crdr_b")})[
        "killed_pids"] == []
    promoted = pair.post(pair.a, "/clusters/pga/promote", {"timeout": 20})
    fork = promoted["switch_lsn"]
    assert parse_lsn(fork) < parse_lsn(tail_end)
    pair.get(pair.b, "/clusters/pgb/preserve", expect=404)  # never preserved yet
    t0 = time.monotonic()
    job = pair.post(pair.b, "/clusters/pgb/preserve", {"fork_lsn": fork, "request_id": "keep-1"})
    answered_s = time.monotonic() - t0
    assert job["request_id"] == "keep-1" and job["state"] in ("running", "done") and job["node"], job
    # the same request answers the same job
    again = pair.post(pair.b, "/clusters/pgb/preserve", {"fork_lsn": fork, "request_id": "keep-1"})
    assert (again["request_id"], again["started"]) == ("keep-1", job["started"]), again
    done = wait_for("the preserve to finish", lambda: (
        st := pair.get(pair.b, "/clusters/pgb/preserve"))["state"] != "running" and st, 120)
    assert done["state"] == "done" and done["request_id"] == "keep-1" and done["finished"], done
    kept = done["result"]
    assert kept["path"].startswith(str(lay_b.dir / "preserved")) and kept["bytes"] > 10_000_000, kept
    assert len(kept["commits"]) >= 5, kept["commits"]
    assert all(parse_lsn(c["lsn"]) >= parse_lsn(fork) and c["xid"] > 0 and c["commit_time"] for c in kept["commits"])
    # idempotent: another request for the same data answers the kept copy at once, copying nothing
    other = pair.post(pair.b, "/clusters/pgb/preserve", {"fork_lsn": fork, "request_id": "keep-2"})
    assert other["state"] == "done" and other["result"] == kept, other
    assert len(list((lay_b.dir / "preserved").glob("*/data"))) == 1
    # the synchronous client call the control plane uses (start, then poll) answers the same
    client = pair.client(pair.b)
    try:
        assert client.preserve("pgb", PreserveRequest(fork_lsn=fork), poll_s=0.2) == PreserveResult(**kept)
        assert client.get_preserve("pgb").result == PreserveResult(**kept)  # type: ignore[union-attr]
    finally:
        client.close()
    print(f"preserve answered in {answered_s:.3f}s (job {job['state']}), done at {done['finished']}")
    print(f"fence killed {fenced['killed_pids']}, last LSN {fenced['last_lsn']}; pga promoted in "
          f"{promoted['promoted_s']:.3f}s forking at {fork}; preserved {kept['bytes']} bytes with "
          f"{len(kept['commits'])} divergent commits")
    # pgb powered again as a standby of pga: Patroni pg_rewinds it and it streams from pga
    t0 = time.monotonic()
    pair.put(pair.b, make_spec("pgb", PGB_NODES, pair.tls, standby_of=source(pair.a, "pga", "crdr_b"),
                               permanent_slots=["crdr_a"], generation=2, **SHARED))
    st = wait_ready(pair.b, "pgb", standby=True, generation=2, timeout=90)
    TIMINGS["rewind_s"] = time.monotonic() - t0
    logs = "".join((lay_b.node_dir(f"pgb-{i}") / "patroni.log").read_text(errors="replace")
                   for i in range(1, PGB_NODES + 1))
    assert "pg_rewind exit code=0" in logs, "Patroni should have run pg_rewind on the diverged old writer"
    with psycopg.connect(dsn(pair.a.status("pga").primary.port), autocommit=True) as conn:
        conn.execute("INSERT INTO notes VALUES (300, 'after the failover')")
        want = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    wait_for("pgb to replay pga's write",
             lambda: parse_lsn(pair.lsn(pair.b, "pgb").replay_lsn or "0/0") >= parse_lsn(want), 20)
    with psycopg.connect(dsn(st.replica.port)) as conn:
        assert conn.execute("SELECT note FROM notes WHERE id = 300").fetchone() == ("after the failover",)
        assert conn.execute("SELECT count(*) FROM notes WHERE id >= 200 AND id < 300").fetchone() == (0,)
    print(f"old writer rewound and streaming {TIMINGS['rewind_s']:.1f}s after the PUT")


def test_region_outage_then_agent_restart_holds_clusters_until_put(pair: Pair) -> None:
    wait_ready(pair.b, "pgb", standby=True)
    lay = RegionLayout(pair.b.region_dir).cluster("pgb")
    with pair.b.http() as c:
        r = c.post("/region/outage")
    assert r.status_code == 200, r.text
    pair.b.proc.wait(timeout=10)
    wait_for("every process of ct-b to be gone", lambda: not processes_under(pair.b.region_dir), 10)
    assert (lay.data_dir("pgb-1") / "PG_VERSION").exists(), "the disk is kept"
    pair.b.start()
    st = pair.b.status("pgb")
    assert st.held and not st.ready, st
    # Consistently: nothing starts while held
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = pair.b.status("pgb")
        assert st.held and st.phase == "stopped", st
        assert all(postmaster_pid(lay.data_dir(f"pgb-{i}")) is None for i in range(1, PGB_NODES + 1)), \
            "a held cluster must not start PostgreSQL"
        time.sleep(0.5)
    assert "held" in (st.message or "")
    with pair.b.http() as c:
        assert c.get("/clusters/pgb/lsn").status_code == 409
    pair.put(pair.b, {**pair.specs["pgb"], "generation": 3})
    st = wait_ready(pair.b, "pgb", standby=True, generation=3, timeout=60)
    assert not st.held
    with psycopg.connect(dsn(st.replica.port)) as conn:
        assert conn.execute("SELECT note FROM notes WHERE id = 300").fetchone() == ("after the failover",)
    print("timings: " + ", ".join(f"{k}={v:.3f}" for k, v in TIMINGS.items()))


def test_bad_crdr_requests(pair: Pair) -> None:
    with pair.a.http() as c:
        cases = [
            (c.post("/clusters/nope/demote", json={"standby_of": {"host": "h", "port": 1}}), 404),
            (c.post("/clusters/pga/demote", json={"standby_of": {"host": "h h", "port": 1}}), 400),
            (c.post("/clusters/pga/demote", json={}), 422),
            (c.post("/clusters/pga/preserve", json={"fork_lsn": "nonsense"}), 400),
            (c.get("/clusters/nope/lsn"), 404),
            (c.put("/clusters/pga", json={**pair.specs["pga"], "permanent_slots": ["Bad-Slot"]}), 400),
        ]
        for resp, code in cases:
            assert resp.status_code == code, (resp.request.url, resp.text)
            assert resp.json()["message"]
