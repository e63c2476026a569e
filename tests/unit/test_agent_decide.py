"""The agent's converge decision and status, as values (no processes)."""

from __future__ import annotations

from pgcrdr.agent.decide import (
    ClusterObs,
    EnsureRoles,
    NodeObs,
    RestartProxy,
    StartNode,
    StartProxy,
    StopNode,
    StopProxy,
    decide,
    format_lsn,
    restart_backoff,
    summarize,
)
from pgcrdr.agentapi.models import ClusterSpec, TLSMaterial
from pgcrdr.agent.ports import ClusterPorts

PORTS = ClusterPorts(base=26010)


def spec(**kw: object) -> ClusterSpec:
    base = dict(cluster="pg1", node_count=2, superuser_password="s", replication_password="r",
                rewind_password="w", tls=TLSMaterial(ca_cert_pem="x", cert_pem="y", key_pem="z"))
    base.update(kw)
    return ClusterSpec(**base)  # type: ignore[arg-type]


def primary(i: int, lsn: int = 100, sync: dict[str, str] | None = None) -> NodeObs:
    """A writer; ``sync``: its pg_stat_replication {application_name: sync_state} (GET /patroni
    "replication"); by default every other node of a 3-node slot streams synchronously."""
    states = {f"pg1-{k}": "sync" for k in (1, 2, 3) if k != i} if sync is None else sync
    rows = [{"application_name": name, "sync_state": st, "state": "streaming"} for name, st in states.items()]
    return NodeObs(index=i, name=f"pg1-{i}", patroni_running=True, postmaster_running=True, has_data=True,
                   rest={"state": "running", "role": "primary", "xlog": {"location": lsn}, "replication": rows})


def replica(i: int, lsn: int = 90, streaming: bool = True, recorded: str | None = "sync_standby") -> NodeObs:
    """A standby; ``recorded``: the flag its GET /patroni shows when Patroni's /sync key lists it."""
    rest: dict = {"state": "running", "role": "replica", "xlog": {"replayed_location": lsn}}
    if streaming:
        rest["replication_state"] = "streaming"
    if recorded:
        rest[recorded] = True
    return NodeObs(index=i, name=f"pg1-{i}", patroni_running=True, postmaster_running=True, has_data=True,
                   rest=rest)


def kinds(decision: object) -> list[str]:
    return [type(a).__name__ for a in decision.actions]  # type: ignore[attr-defined]


def test_nothing_running_starts_every_node_and_the_proxy() -> None:
    d = decide(ClusterObs(spec=spec(), now=0.0, nodes=()))
    assert d.actions == [StartNode("pg1-1", 1), StartNode("pg1-2", 2), StartProxy()]
    assert "start pg1-1" in d.reason


def test_nothing_starts_while_etcd_is_down() -> None:
    d = decide(ClusterObs(spec=spec(), now=0.0, nodes=(), etcd_healthy=False))
    assert not any(isinstance(a, StartNode) for a in d.actions)
    assert "waiting for etcd" in d.reason


def test_converged_cluster_does_nothing() -> None:
    obs = ClusterObs(spec=spec(generation=3), now=0.0, nodes=(primary(1), replica(2)), proxy_running=True,
                     ensured=(3, "pg1-1"))
    d = decide(obs)
    assert d.actions == [] and d.reason == "converged"


def test_users_are_ensured_again_on_new_generation_or_new_leader() -> None:
    base = dict(nodes=(primary(1), replica(2)), proxy_running=True)
    assert decide(ClusterObs(spec=spec(generation=4), now=0, ensured=(3, "pg1-1"), **base)).actions == [
        EnsureRoles("pg1-1", 1)]
    swapped = (replica(1), primary(2))
    assert decide(ClusterObs(spec=spec(generation=3), now=0, ensured=(3, "pg1-1"), nodes=swapped,
                             proxy_running=True)).actions == [EnsureRoles("pg1-2", 2)]


def test_killed_node_is_held_down_until_restart_after() -> None:
    dead = NodeObs(index=1, name="pg1-1", has_data=True, held_until=30.0)
    obs = ClusterObs(spec=spec(), now=10.0, nodes=(dead, replica(2)), proxy_running=True)
    assert decide(obs).actions == []
    later = ClusterObs(spec=spec(), now=31.0, nodes=(dead, replica(2)), proxy_running=True)
    assert StartNode("pg1-1", 1) in decide(later).actions


def test_crashing_node_restarts_with_backoff() -> None:
    crashed = NodeObs(index=1, name="pg1-1", failures=3, last_start=100.0)
    assert restart_backoff(3) == 4.0 and restart_backoff(20) == 30.0 and restart_backoff(0) == 0.0
    too_soon = ClusterObs(spec=spec(node_count=1), now=102.0, nodes=(crashed,), proxy_running=True)
    assert decide(too_soon).actions == []
    later = ClusterObs(spec=spec(node_count=1), now=104.5, nodes=(crashed,), proxy_running=True)
    assert decide(later).actions == [StartNode("pg1-1", 1)]


def test_power_off_stops_standbys_before_the_leader_then_the_proxy() -> None:
    obs = ClusterObs(spec=spec(powered=False), now=0, nodes=(primary(1), replica(2)), proxy_running=True)
    assert decide(obs).actions == [StopNode("pg1-2", 2), StopNode("pg1-1", 1), StopProxy()]


def test_shrinking_removes_the_extra_node() -> None:
    obs = ClusterObs(spec=spec(node_count=1), now=0, nodes=(primary(1), replica(2)), proxy_running=True,
                     proxy_config_changed=True, ensured=(0, "pg1-1"))
    assert decide(obs).actions == [StopNode("pg1-2", 2, remove_data=True), RestartProxy()]


def test_status_ready_needs_streaming_replicas_and_users() -> None:
    obs = ClusterObs(spec=spec(), now=0, nodes=(primary(1, 200), replica(2, 150)), proxy_running=True,
                     ensured=(0, "pg1-1"), endpoint_verified="pg1-1")
    st = summarize(obs, region="r", ports=PORTS, ever_ready=False)
    assert st.ready and st.phase == "running" and st.message is None
    assert [n.role for n in st.nodes] == ["primary", "replica"]
    assert st.nodes[1].lag_bytes == 50 and st.nodes[0].lsn == format_lsn(200) == "0/C8"
    assert st.primary.port == 26010 and st.replica.port == 26011 and st.nodes[1].pg_port == 26014

    not_streaming = ClusterObs(spec=spec(), now=0, nodes=(primary(1), replica(2, streaming=False)),
                               proxy_running=True, ensured=(0, "pg1-1"), endpoint_verified="pg1-1")
    assert not summarize(not_streaming, region="r", ports=PORTS, ever_ready=False).ready
    unproven = ClusterObs(spec=spec(), now=0, nodes=(primary(1), replica(2)), proxy_running=True,
                          ensured=(0, "pg1-1"), endpoint_verified=None)
    assert not summarize(unproven, region="r", ports=PORTS, ever_ready=False).ready
    assert not summarize(not_streaming, region="r", ports=PORTS, ever_ready=False).ready
    no_users = ClusterObs(spec=spec(), now=0, nodes=(primary(1), replica(2)), proxy_running=True)
    st = summarize(no_users, region="r", ports=PORTS, ever_ready=False)
    assert not st.ready and st.phase == "creating"


def test_ready_needs_a_synchronous_standby_recorded_by_patroni() -> None:
    base = dict(proxy_running=True, ensured=(0, "pg1-1"), endpoint_verified="pg1-1")
    st = summarize(ClusterObs(spec=spec(), now=0, nodes=(primary(1), replica(2)), **base),
                   region="r", ports=PORTS, ever_ready=False)
    assert st.ready and st.sync_standbys == ["pg1-2"] and st.nodes[1].sync_state == "sync"
    assert st.nodes[0].sync_state is None and st.message is None
    # PostgreSQL already waits for it but Patroni has not written /sync yet: a failover could not
    # promote it (the cause of the reverted attempt): not ready
    unrecorded = ClusterObs(spec=spec(), now=0, nodes=(primary(1), replica(2, recorded=None)), **base)
    st = summarize(unrecorded, region="r", ports=PORTS, ever_ready=False)
    assert not st.ready and st.nodes[1].sync_state == "potential" and st.sync_standbys == []
    assert st.message is None  # not said while the cluster is being created
    # once built, the same is degraded durability, said in the message (the service stays RUNNING)
    st = summarize(unrecorded, region="r", ports=PORTS, ever_ready=True)
    assert st.phase == "running" and not st.ready and "durability degraded" in (st.message or "")
    # the standby is lost: the writer goes on alone (async), degraded until it is back
    lost = ClusterObs(spec=spec(), now=0, nodes=(primary(1, sync={}), NodeObs(index=2, name="pg1-2")), **base)
    st = summarize(lost, region="r", ports=PORTS, ever_ready=True)
    assert "durability degraded" in (st.message or "") and st.nodes[1].sync_state is None
    # Patroni's flag alone (a stale /sync) is not enough: PostgreSQL must wait for it too
    stale = ClusterObs(spec=spec(), now=0, nodes=(primary(1, sync={"pg1-2": "async"}), replica(2)), **base)
    st = summarize(stale, region="r", ports=PORTS, ever_ready=True)
    assert not st.ready and st.nodes[1].sync_state == "async"


def test_three_nodes_are_quorum_and_one_node_or_forced_async_needs_no_standby() -> None:
    base = dict(proxy_running=True, ensured=(0, "pg1-1"), endpoint_verified="pg1-1")
    three = ClusterObs(spec=spec(node_count=3), now=0, nodes=(
        primary(1, sync={"pg1-2": "quorum"}), replica(2, recorded="quorum_standby"),
        NodeObs(index=3, name="pg1-3")), **base)
    st = summarize(three, region="r", ports=PORTS, ever_ready=True)
    assert st.sync_standbys == ["pg1-2"] and [n.sync_state for n in st.nodes] == [None, "quorum", None]
    assert "durability degraded" not in (st.message or "")  # one of two standbys left: still synchronous
    forced = ClusterObs(spec=spec(sync_replication=False), now=0,
                        nodes=(primary(1, sync={"pg1-2": "async"}), replica(2, recorded=None)), **base)
    st = summarize(forced, region="r", ports=PORTS, ever_ready=True)
    assert st.ready and st.sync_standbys == [] and st.nodes[1].sync_state == "async" and st.message is None
    solo = ClusterObs(spec=spec(node_count=1), now=0, nodes=(primary(1, sync={}),), **base)
    st = summarize(solo, region="r", ports=PORTS, ever_ready=True)
    assert st.ready and st.message is None


def test_status_reports_postgres_start_failure_with_log_line() -> None:
    broken = NodeObs(index=1, name="pg1-1", patroni_running=True, rest={"state": "start failed", "role": "replica"},
                     last_error="FATAL:  invalid value for parameter \"shared_buffers\"")
    st = summarize(ClusterObs(spec=spec(node_count=1), now=0, nodes=(broken,), proxy_running=True),
                   region="r", ports=PORTS, ever_ready=False)
    assert st.phase == "failed" and not st.ready
    assert st.message and st.message.startswith("PostgreSQL failed to start on pg1-1: FATAL")
    assert st.nodes[0].state == "failed"


def test_status_reports_patroni_crash_loop() -> None:
    looping = NodeObs(index=1, name="pg1-1", failures=4, last_error="ConnectionRefused")
    st = summarize(ClusterObs(spec=spec(node_count=1), now=0, nodes=(looping,)), region="r", ports=PORTS,
                   ever_ready=False)
    assert st.message and "restarting in a loop" in st.message and "ConnectionRefused" in st.message


def test_status_powered_off() -> None:
    stopped = NodeObs(index=1, name="pg1-1", has_data=True)
    st = summarize(ClusterObs(spec=spec(node_count=1, powered=False), now=0, nodes=(stopped,)),
                   region="r", ports=PORTS, ever_ready=True)
    assert st.phase == "stopped" and not st.ready and st.nodes[0].state == "stopped"
    st = summarize(ClusterObs(spec=spec(node_count=1, powered=False), now=0, nodes=(primary(1),)),
                   region="r", ports=PORTS, ever_ready=True)
    assert st.phase == "stopping"


def test_status_during_failover_says_no_writer() -> None:
    old = NodeObs(index=1, name="pg1-1", has_data=True)
    waiting = NodeObs(index=2, name="pg1-2", patroni_running=True, has_data=True,
                      rest={"state": "running", "role": "replica"})
    st = summarize(ClusterObs(spec=spec(), now=0, nodes=(old, waiting), proxy_running=True), region="r",
                   ports=PORTS, ever_ready=True)
    assert st.phase == "running" and not st.ready and "no writer" in (st.message or "")


def test_basebackup_progress_is_reported_for_a_replica_being_built() -> None:
    building = NodeObs(index=2, name="pg1-2", patroni_running=True, rest={"state": "creating replica",
                                                                           "role": "uninitialized"})
    obs = ClusterObs(spec=spec(), now=0, nodes=(primary(1), building), proxy_running=True,
                     basebackups=((1000, 4000),))
    st = summarize(obs, region="r", ports=PORTS, ever_ready=False)
    phases = [(p.phase, p.current, p.max) for p in st.nodes[1].progress]
    assert ("basebackup", 1000, 4000) in phases


def test_crash_loop_caused_by_postgres_names_postgres() -> None:
    looping = NodeObs(index=1, name="pg1-1", failures=2,
                      last_error='2026 UTC [9] FATAL:  could not access file "no_such_lib"')
    st = summarize(ClusterObs(spec=spec(node_count=1), now=0, nodes=(looping,)), region="r", ports=PORTS,
                   ever_ready=False)
    assert st.message and st.message.startswith("PostgreSQL failed to start on pg1-1 (Patroni exited 2 times)")
    assert "no_such_lib" in st.message
