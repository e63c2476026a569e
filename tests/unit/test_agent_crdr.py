"""CRDR parts of the agent as values: the DCS patch, WAL parsing, held/standby decisions and
status, validation, rendered configs (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgcrdr.agent.dcs import apply_patch, crdr_dcs, dcs_patch, standby_cluster_config, sync_mode
from pgcrdr.agent.decide import ClusterObs, EnsureRoles, NodeObs, StartNode, StopNode, decide, summarize
from pgcrdr.agentapi.models import ClusterSpec, StandbySource, TLSMaterial
from pgcrdr.agent.patroni import NodePaths, render_patroni_config
from pgcrdr.agent.ports import ClusterPorts
from pgcrdr.agent.proxy import ProxyNode, render_haproxy_config
from pgcrdr.agent.validation import source_problems
from pgcrdr.agentapi.lsn import format_lsn, parse_lsn
from pgcrdr.agent.wal import (
    ControlData,
    max_lsn,
    parse_controldata,
    parse_waldump_commits,
    parse_waldump_end,
)

PORTS = ClusterPorts(base=26010)
SRC = StandbySource(host="127.0.0.1", port=27010, primary_slot_name="crdr_b")


def spec(**kw: object) -> ClusterSpec:
    base = dict(cluster="pg1", node_count=1, superuser_password="s", replication_password="r",
                rewind_password="w", tls=TLSMaterial(ca_cert_pem="x", cert_pem="y", key_pem="z"))
    base.update(kw)
    return ClusterSpec(**base)  # type: ignore[arg-type]


def node(role: str, streaming: bool = True, **xlog: int) -> NodeObs:
    rest: dict = {"state": "running", "role": role, "timeline": 2, "xlog": xlog}
    if streaming and role != "primary":
        rest["replication_state"] = "streaming"
    return NodeObs(index=1, name="pg1-1", patroni_running=True, postmaster_running=True, has_data=True, rest=rest)


# --- DCS -----------------------------------------------------------------------------------------

def test_standby_cluster_config_follows_the_source() -> None:
    assert standby_cluster_config(None) is None
    assert standby_cluster_config(SRC) == {"host": "127.0.0.1", "port": 27010, "primary_slot_name": "crdr_b",
                                           "create_replica_methods": ["basebackup"]}
    assert "primary_slot_name" not in standby_cluster_config(StandbySource(host="h", port=1))  # type: ignore[operator]
    assert crdr_dcs(spec()) == {}
    assert crdr_dcs(spec(standby_of=SRC, permanent_slots=["crdr_a"])) == {
        "standby_cluster": standby_cluster_config(SRC), "slots": {"crdr_a": {"type": "physical"}}}


def test_synchronous_mode_follows_the_node_count_and_reaches_running_clusters() -> None:
    assert [sync_mode(spec(node_count=n)) for n in (1, 2, 3)] == [False, True, "quorum"]
    assert sync_mode(spec(node_count=2, sync_replication=False)) is False
    two = spec(node_count=2)
    assert crdr_dcs(two) == {"synchronous_mode": True, "synchronous_node_count": 1, "synchronous_mode_strict": False}
    # a standby cluster carries it too (Patroni ignores it until the promotion, then applies it)
    assert crdr_dcs(spec(node_count=2, standby_of=SRC))["synchronous_mode"] is True
    # a cluster created before (no key) gets it; growing to 3 switches to quorum; 1 node: off
    assert dcs_patch(two, {"ttl": 20}) == {"synchronous_mode": True}  # the other two are the defaults
    assert dcs_patch(spec(node_count=3), {**crdr_dcs(two)}) == {"synchronous_mode": "quorum"}
    assert dcs_patch(spec(node_count=1), {**crdr_dcs(two)}) == {"synchronous_mode": False}
    assert dcs_patch(spec(node_count=1), {"ttl": 20}) is None
    assert dcs_patch(two, {"synchronous_mode": "on", "synchronous_node_count": "1",
                           "synchronous_mode_strict": "off"}) is None


def test_dcs_patch_is_none_when_in_line() -> None:
    s = spec(standby_of=SRC, permanent_slots=["crdr_a"])
    current = {"ttl": 20, **crdr_dcs(s)}
    assert dcs_patch(s, current) is None
    # Patroni compares by string: a port stored as "27010" is the same
    current["standby_cluster"]["port"] = "27010"
    assert dcs_patch(s, current) is None


def test_dcs_patch_demotes_promotes_and_repoints() -> None:
    writer_cfg = {"ttl": 20, "slots": {"crdr_b": {"type": "physical"}}}
    demote = dcs_patch(spec(standby_of=SRC, permanent_slots=["crdr_b"]), writer_cfg)
    assert demote == {"standby_cluster": standby_cluster_config(SRC)}
    standby_cfg = apply_patch(writer_cfg, demote)
    assert standby_cfg["standby_cluster"]["port"] == 27010 and writer_cfg.get("standby_cluster") is None
    assert dcs_patch(spec(permanent_slots=["crdr_b"]), standby_cfg) == {"standby_cluster": None}
    # a new source without a slot name: the old slot name must be removed, not kept by the merge
    moved = dcs_patch(spec(standby_of=StandbySource(host="10.0.0.1", port=5), permanent_slots=["crdr_b"]),
                      standby_cfg)
    assert moved is not None
    assert apply_patch(standby_cfg, moved)["standby_cluster"] == {
        "host": "10.0.0.1", "port": 5, "create_replica_methods": ["basebackup"]}


def test_dcs_patch_manages_permanent_slots_by_name() -> None:
    cur = {"slots": {"old": {"type": "physical"}, "keep": {"type": "physical"}}}
    patch = dcs_patch(spec(permanent_slots=["keep", "new"]), cur)
    assert patch == {"slots": {"new": {"type": "physical"}, "old": None}}
    assert apply_patch(cur, patch) == {"slots": {"keep": {"type": "physical"}, "new": {"type": "physical"}}}


def test_bootstrap_dcs_carries_standby_cluster_and_slots(tmp_path: Path) -> None:
    paths = NodePaths(data_dir=tmp_path, socket_dir=tmp_path, pg_log_dir=tmp_path, pgpass=tmp_path / "p",
                      cert_file=tmp_path / "c", key_file=tmp_path / "k", ca_file=tmp_path / "ca")
    cfg = render_patroni_config(spec(standby_of=SRC, permanent_slots=["crdr_a"]), "pg1-1", pg_port=1, rest_port=2,
                                etcd_port=3, paths=paths, pg_bin_dir=tmp_path)
    dcs = cfg["bootstrap"]["dcs"]
    assert dcs["standby_cluster"]["host"] == "127.0.0.1" and dcs["slots"] == {"crdr_a": {"type": "physical"}}
    assert dcs["postgresql"]["use_pg_rewind"] is True


# --- WAL -----------------------------------------------------------------------------------------

def test_lsn_parsing() -> None:
    assert parse_lsn("0/3000148") == 0x3000148 and parse_lsn("1/0") == 1 << 32
    assert format_lsn(parse_lsn("A/FF")) == "A/FF"
    assert max_lsn("0/5", None, "0/10", "0/F") == "0/10" and max_lsn(None) is None
    with pytest.raises(ValueError):
        parse_lsn("nonsense")


CONTROLDATA = """pg_control version number:            1300
Database cluster state:               shut down
Latest checkpoint location:           0/300A3E8
Latest checkpoint's REDO location:    0/300A3E8
Latest checkpoint's TimeLineID:       2
Minimum recovery ending location:     0/0
Time of latest checkpoint:            Thu Nov 26 09:46:34 2026
"""


def test_controldata_parsing() -> None:
    cd = ControlData.from_fields(parse_controldata(CONTROLDATA))
    assert cd == ControlData(state="shut down", checkpoint_lsn="0/300A3E8", redo_lsn="0/300A3E8", timeline=2)


def test_waldump_end_of_wal() -> None:
    err = "pg_waldump: error: error in WAL record at 0/15165D0: invalid record length at 0/1516768: wanted 24, got 0"
    assert parse_waldump_end("", err) == "0/1516768"
    out = ("rmgr: Heap len (rec/tot): 54/ 54, tx: 1, lsn: 0/01000028, prev 0/0, desc: INSERT\n"
           "rmgr: Heap len (rec/tot): 54/ 54, tx: 1, lsn: 0/01000060, prev 0/01000028, desc: INSERT\n")
    assert parse_waldump_end(out, "") == "0/1000060"
    assert parse_waldump_end("", "") is None


def test_waldump_commits() -> None:
    out = (
        "rmgr: Transaction len (rec/tot):     66/    66, tx:        722, lsn: 0/015004A8, prev 0/01500430, "
        "desc: COMMIT 2026-11-26 09:46:34.964976 UTC; inval msgs: catcache 21; sync\n"
        "rmgr: Transaction len (rec/tot):     34/    34, tx:        723, lsn: 0/015006C8, prev 0/01500628, "
        "desc: COMMIT 2026-11-26 09:46:35.000001 UTC\n"
        "rmgr: Transaction len (rec/tot):     34/    34, tx:        724, lsn: 0/01500700, prev 0/015006C8, "
        "desc: ABORT 2026-11-26 09:46:35.100000 UTC\n"
    )
    commits = parse_waldump_commits(out)
    assert [(c.lsn, c.xid, c.commit_time) for c in commits] == [
        ("0/15004A8", 722, "2026-11-26 09:46:34.964976 UTC"), ("0/15006C8", 723, "2026-11-26 09:46:35.000001 UTC")]


# --- decisions and status ------------------------------------------------------------------------

def test_held_cluster_starts_nothing_but_stops_an_unsupervised_postmaster() -> None:
    d = decide(ClusterObs(spec=spec(node_count=2), now=0.0, nodes=(), held=True))
    assert d.actions == [] and "held" in d.reason
    orphan = NodeObs(index=1, name="pg1-1", postmaster_running=True, has_data=True)
    assert decide(ClusterObs(spec=spec(), now=0.0, nodes=(orphan,), held=True)).actions == [StopNode("pg1-1", 1)]


def test_held_status_is_stopped_and_says_why() -> None:
    st = summarize(ClusterObs(spec=spec(), now=0.0, nodes=(), held=True), region="r", ports=PORTS, ever_ready=True)
    assert st.held and st.phase == "stopped" and not st.ready and "held" in (st.message or "")
    assert st.nodes[0].state == "stopped"


def test_nothing_starts_before_the_dcs_says_standby() -> None:
    d = decide(ClusterObs(spec=spec(standby_of=SRC), now=0.0, nodes=(), dcs_synced=False, dcs_error="etcd: boom"))
    assert not any(isinstance(a, StartNode) for a in d.actions) and "DCS" in d.reason
    st = summarize(ClusterObs(spec=spec(standby_of=SRC), now=0.0, nodes=(), dcs_synced=False, dcs_error="boom"),
                   region="r", ports=PORTS, ever_ready=False)
    assert "boom" in (st.message or "")


def test_standby_cluster_never_ensures_roles_and_is_ready_when_streaming() -> None:
    leader = node("standby_leader", received_location=200, replayed_location=190)
    obs = ClusterObs(spec=spec(standby_of=SRC), now=0.0, nodes=(leader,), proxy_running=True,
                     endpoint_verified="pg1-1")
    assert not any(isinstance(a, EnsureRoles) for a in decide(obs).actions)
    st = summarize(obs, region="r", ports=PORTS, ever_ready=False)
    assert st.ready and st.standby and st.nodes[0].role == "standby_leader"
    assert st.lsn is not None and st.lsn.in_recovery and st.lsn.replay_lsn == "0/BE" and st.lsn.timeline == 2
    # not streaming from the source (e.g. it is down): not ready
    cut = ClusterObs(spec=spec(standby_of=SRC), now=0.0, nodes=(node("standby_leader", streaming=False),),
                     proxy_running=True, endpoint_verified="pg1-1")
    assert not summarize(cut, region="r", ports=PORTS, ever_ready=False).ready


def test_writer_status_carries_its_lsn_and_a_promoted_cluster_ensures_roles() -> None:
    obs = ClusterObs(spec=spec(), now=0.0, nodes=(node("primary", location=4096),), proxy_running=True)
    assert EnsureRoles("pg1-1", 1) in decide(obs).actions
    st = summarize(obs, region="r", ports=PORTS, ever_ready=False)
    assert not st.standby and st.lsn is not None and st.lsn.current_lsn == "0/1000" and not st.lsn.in_recovery


# --- validation and proxy ------------------------------------------------------------------------

def test_source_and_slot_validation() -> None:
    assert source_problems(SRC) == []
    assert source_problems(StandbySource(host="bad host", port=70000, primary_slot_name="Bad-Slot")) == [
        "invalid standby_of.host 'bad host'", "invalid standby_of.port 70000",
        "invalid standby_of.primary_slot_name 'Bad-Slot'"]


def test_replica_endpoint_of_a_standby_cluster_reaches_its_standby_leader() -> None:
    text = render_haproxy_config("pg1", 100, 101, [ProxyNode("pg1-1", 102, 103)])
    assert "use_backend standby_leader_nodes if { nbsrv(standby_leader_nodes) gt 0 }" in text
    assert "http-check send meth GET uri /standby-leader" in text
    assert text.index("use_backend replica_nodes") < text.index("use_backend standby_leader_nodes")



def test_no_wal_after_the_fork_is_no_divergence() -> None:
    """What pg_waldump says when the old writer's WAL ends before the fork (seen after a failover of
    a live, idle primary): nothing diverged, which is not an error."""
    from pgcrdr.agent.wal import nothing_written_from

    missing = 'pg_waldump: error: could not find file "000000010000000000000003": No such file or directory'
    before = ["000000010000000000000001", "000000010000000000000002", "archive_status"]
    assert nothing_written_from(missing, before)
    assert not nothing_written_from(missing, [*before, "000000010000000000000004"]), "a gap is not the end"
    assert nothing_written_from("pg_waldump: error: could not find a valid record after 0/3000000", before)
    assert not nothing_written_from("pg_waldump: error: could not find any WAL file", [])
    assert not nothing_written_from("pg_waldump: error: error in WAL record at 0/15165D0: invalid record", before)
