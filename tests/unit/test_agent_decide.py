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
from pgcrdr.agent.models import ClusterSpec, TLSMaterial
from pgcrdr.agent.ports import ClusterPorts

PORTS = ClusterPorts(base=26010)


def spec(**kw: object) -> ClusterSpec:
    base = dict(cluster="pg1", node_count=2, superuser_password="s", replication_password="r",
                rewind_password="w", tls=TLSMaterial(ca_cert_pem="x", cert_pem="y", key_pem="z"))
    base.update(kw)
    return ClusterSpec(**base)  # type: ignore[arg-type]


def primary(i: int, lsn: int = 100) -> NodeObs:
    return NodeObs(index=i, name=f"pg1-{i}", patroni_running=True, postmaster_running=True, has_data=True,
                   rest={"state": "running", "role": "primary", "xlog": {"location": lsn}})


def replica(i: int, lsn: int = 90, streaming: bool = True) -> NodeObs:
    rest = {"state": "running", "role": "replica", "xlog": {"replayed_location": lsn}}
    if streaming:
        rest["replication_state"] = "streaming"
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
