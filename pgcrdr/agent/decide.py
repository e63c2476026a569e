"""The converge decision of one cluster, and its status, as pure functions of an observation.

``decide`` answers "what should the agent do now?" and ``summarize`` answers "what does the
user see?"; neither does I/O, both take the clock as an argument, so both are tested as values
(tests/unit/test_agent_decide.py). ``runtime`` observes and executes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pgcrdr.agent.dcs import sync_mode
from pgcrdr.agentapi.models import (
    ClusterPhase,
    ClusterSpec,
    ClusterStatus,
    Endpoint,
    LsnInfo,
    NodeRole,
    NodeRunState,
    NodeStatus,
    ProgressUpdate,
    SyncState,
)
from pgcrdr.agent.ports import ClusterPorts

# Consecutive unexpected exits of Patroni after which a node is reported as failing.
CRASH_LOOP_FAILURES = 2
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class NodeObs:
    index: int
    name: str
    patroni_running: bool = False
    postmaster_running: bool = False
    has_data: bool = False
    rest: Mapping[str, Any] | None = None  # GET /patroni
    held_until: float | None = None  # monotonic; set by a kill drill
    failures: int = 0  # consecutive unexpected exits of Patroni
    last_start: float | None = None  # monotonic
    config_changed: bool = False  # patroni.yml on disk differs from the rendered one
    last_error: str | None = None  # last error line of its logs (when failing)

    @property
    def rest_state(self) -> str | None:
        return str(self.rest.get("state")) if self.rest else None

    @property
    def rest_role(self) -> str | None:
        return str(self.rest.get("role")) if self.rest else None

    @property
    def is_leader(self) -> bool:
        return (
            self.patroni_running
            and self.rest_role in ("primary", "master", "standby_leader")
            and self.rest_state == "running"
        )

    def held(self, now: float) -> bool:
        return self.held_until is not None and now < self.held_until


@dataclass(frozen=True)
class ClusterObs:
    spec: ClusterSpec
    now: float
    nodes: tuple[NodeObs, ...]  # every node slot with anything to say (1..3)
    etcd_healthy: bool = True
    proxy_running: bool = False
    proxy_config_changed: bool = False
    ensured: tuple[int, str] | None = None  # (generation, leader) users/databases were ensured for
    ensure_error: str | None = None
    action_error: str | None = None  # the last action that failed, as a sentence
    basebackups: tuple[tuple[int, int | None], ...] = ()  # (streamed, total) on the leader
    endpoint_verified: str | None = None  # the leader a probe through the primary endpoint reached
    # CRDR
    held: bool = False  # resumed after an agent restart with nothing running: start nothing until a PUT
    held_reason: str | None = None  # why it is held, when not for that (the writer lease was lost)
    dcs_synced: bool = True  # the DCS config (standby_cluster, slots) matches the spec
    dcs_error: str | None = None
    # A fork (spec.restore_from) whose first node's data is still being restored from backups.
    restoring: bool = False

    def node(self, index: int) -> NodeObs:
        for n in self.nodes:
            if n.index == index:
                return n
        return NodeObs(index=index, name=f"{self.spec.cluster}-{index}")

    @property
    def wanted(self) -> list[NodeObs]:
        return [self.node(i) for i in range(1, self.spec.node_count + 1)]

    @property
    def leader(self) -> NodeObs | None:
        leaders = [n for n in self.wanted if n.is_leader]
        # Patroni guarantees at most one leader per scope; if we ever saw two, prefer the
        # lowest index so every observer reports the same one.
        return leaders[0] if leaders else None


# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StartNode:
    name: str
    index: int


@dataclass(frozen=True)
class ReloadNode:
    name: str
    index: int


@dataclass(frozen=True)
class StopNode:
    name: str
    index: int
    remove_data: bool = False


@dataclass(frozen=True)
class StartProxy:
    pass


@dataclass(frozen=True)
class RestartProxy:
    pass


@dataclass(frozen=True)
class StopProxy:
    pass


@dataclass(frozen=True)
class EnsureRoles:
    leader: str
    index: int


Action = StartNode | ReloadNode | StopNode | StartProxy | RestartProxy | StopProxy | EnsureRoles


@dataclass(frozen=True)
class Decision:
    actions: list[Action] = field(default_factory=list)
    reason: str = "nothing to do"


def restart_backoff(failures: int) -> float:
    """Seconds to wait before restarting a node whose Patroni exited ``failures`` times in a row."""
    if failures <= 0:
        return 0.0
    return min(2.0 ** (failures - 1), MAX_BACKOFF_S)


def decide(obs: ClusterObs) -> Decision:
    spec, now = obs.spec, obs.now
    actions: list[Action] = []
    why: list[str] = []
    if obs.held:
        # A region back from an outage must not start a writer the control plane may have
        # fenced meanwhile: nothing starts until the spec is PUT again. A postmaster left
        # without its Patroni would be an unsupervised writer: stop it.
        for n in obs.nodes:
            if n.postmaster_running and not n.patroni_running:
                actions.append(StopNode(n.name, n.index))
                why.append(f"stop {n.name} (postmaster without Patroni while held)")
        return Decision(actions, "; ".join(why) or "held until the control plane PUTs the spec again")
    if not spec.powered:
        # Standbys first, the leader last: a leader stopping first would hand its role over.
        running = [n for n in obs.nodes if n.patroni_running or n.postmaster_running]
        running.sort(key=lambda n: (n.is_leader, n.index))
        for n in running:
            actions.append(StopNode(n.name, n.index))
            why.append(f"stop {n.name} (powered off)")
        if obs.proxy_running:
            actions.append(StopProxy())
            why.append("stop proxy (powered off)")
        return Decision(actions, "; ".join(why) or "powered off: nothing runs")

    for n in obs.nodes:
        if n.index > spec.node_count and (n.patroni_running or n.postmaster_running or n.has_data):
            actions.append(StopNode(n.name, n.index, remove_data=True))
            why.append(f"remove {n.name} (node_count={spec.node_count})")
    if not obs.etcd_healthy:
        why.append("waiting for etcd before starting anything")
    elif not obs.dcs_synced:
        # The line that keeps a standby cluster from ever starting as a writer: no Patroni is
        # started before the DCS says standby_cluster (bootstrap.dcs only applies to new scopes).
        why.append("waiting for the DCS config to match the spec before starting Patroni")
    if obs.restoring and spec.restore_from is not None:
        why.append(f"waiting for the restore from the backups of {spec.restore_from.stanza}")
    # A fork's empty nodes wait for a leader to clone from: started before the restored node had
    # claimed the scope, one would initdb a new, empty cluster.
    wait_for_leader = spec.restore_from is not None and obs.leader is None
    for n in obs.wanted:
        if n.held(now):
            why.append(f"{n.name} held down by a kill drill")
            continue
        if not n.patroni_running:
            if not obs.etcd_healthy or not obs.dcs_synced or obs.restoring:
                continue
            if wait_for_leader and not n.has_data:
                why.append(f"{n.name} waits for the restored node to lead")
                continue
            wait = restart_backoff(n.failures)
            if n.last_start is not None and now - n.last_start < wait:
                why.append(f"{n.name} restarts after back-off ({n.failures} failures)")
                continue
            actions.append(StartNode(n.name, n.index))
            why.append(f"start {n.name}" + (f" (after {n.failures} failures)" if n.failures else ""))
        elif n.config_changed:
            actions.append(ReloadNode(n.name, n.index))
            why.append(f"reload {n.name} (configuration changed)")
    if not obs.proxy_running:
        actions.append(StartProxy())
        why.append("start proxy")
    elif obs.proxy_config_changed:
        actions.append(RestartProxy())
        why.append("restart proxy (configuration changed)")
    leader = obs.leader
    # Users and databases come from the source's data on a standby cluster (it is read-only).
    if leader is not None and _is_writer(leader) and spec.standby_of is None \
            and obs.ensured != (spec.generation, leader.name):
        actions.append(EnsureRoles(leader.name, leader.index))
        why.append(f"ensure users and databases on {leader.name} (generation {spec.generation})")
    return Decision(actions, "; ".join(why) or "converged")


# --- status --------------------------------------------------------------------------------


def format_lsn(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _xlog(n: NodeObs) -> Mapping[str, Any]:
    x = n.rest.get("xlog") if n.rest else None
    return x if isinstance(x, Mapping) else {}


def node_lsn(n: NodeObs) -> int | None:
    x = _xlog(n)
    for key in ("location", "replayed_location", "received_location"):
        v = x.get(key)
        if isinstance(v, int):
            return v
    return None


def _is_writer(n: NodeObs) -> bool:
    return n.rest_role in ("primary", "master")


def _lsn_text(v: Any) -> str | None:
    return format_lsn(v) if isinstance(v, int) else None


def lsn_info_from_rest(n: NodeObs) -> LsnInfo | None:
    """WAL positions of a node as its Patroni REST reports them (no SQL). Pure."""
    if not n.rest or n.rest_state != "running":
        return None
    x = _xlog(n)
    tl = n.rest.get("timeline")
    timeline = tl if isinstance(tl, int) else None
    if _is_writer(n):
        return LsnInfo(node=n.name, in_recovery=False, timeline=timeline, current_lsn=_lsn_text(x.get("location")))
    ts = x.get("replayed_timestamp")
    return LsnInfo(node=n.name, in_recovery=True, timeline=timeline,
                   receive_lsn=_lsn_text(x.get("received_location")),
                   replay_lsn=_lsn_text(x.get("replayed_location")),
                   replay_time=str(ts) if ts else None)


_ROLES: dict[str | None, NodeRole] = {"primary": "primary", "master": "primary", "replica": "replica",
                                     "standby_leader": "standby_leader"}


def _role(n: NodeObs) -> NodeRole:
    return _ROLES.get(n.rest_role if n.patroni_running else None, "unknown")


def node_failing(n: NodeObs) -> str | None:
    """Why a node is failing, as a sentence a user can act on, or None."""
    detail = f": {n.last_error}" if n.last_error else ""
    if n.patroni_running and n.rest_state in ("start failed", "crashed"):
        return f"PostgreSQL failed to start on {n.name}{detail}"
    if n.failures >= CRASH_LOOP_FAILURES:
        if n.last_error and any(k in n.last_error for k in ("FATAL:", "PANIC:")):
            return f"PostgreSQL failed to start on {n.name} (Patroni exited {n.failures} times){detail}"
        return f"Patroni on {n.name} is restarting in a loop ({n.failures} exits){detail}"
    return None


def _state(obs: ClusterObs, n: NodeObs) -> NodeRunState:
    if not obs.spec.powered or obs.held or n.held(obs.now):
        return "stopped" if not (n.patroni_running or n.postmaster_running) else "starting"
    if node_failing(n):
        return "failed"
    if n.patroni_running and n.rest_state == "running":
        return "running"
    return "starting"


def _streaming(n: NodeObs) -> bool:
    if not n.rest:
        return False
    if n.rest_role in ("primary", "master"):
        return True
    # replicas stream from their leader, a standby leader from the source cluster
    return n.rest.get("replication_state") == "streaming"


def sync_expected(spec: ClusterSpec) -> bool:
    """Synchronous replication applies: a writer cluster (not a standby cluster) of 2-3 nodes."""
    return spec.standby_of is None and sync_mode(spec) is not False


def _pg_sync_states(leader: NodeObs | None) -> dict[str, str]:
    """{application_name: sync_state} of the writer's pg_stat_replication (GET /patroni)."""
    rows = leader.rest.get("replication") if leader is not None and leader.rest else None
    if not isinstance(rows, list):
        return {}
    return {str(r.get("application_name")): str(r.get("sync_state")) for r in rows if isinstance(r, Mapping)}


def _recorded(n: NodeObs) -> bool:
    """Patroni's /sync key lists the node (its GET /patroni says sync_standby/quorum_standby)."""
    return bool(n.rest and n.rest_role == "replica" and (n.rest.get("sync_standby") or n.rest.get("quorum_standby")))


_SYNC_STATES: dict[str | None, SyncState] = {"sync": "sync", "quorum": "quorum", "potential": "potential",
                                             "async": "async"}


def node_sync_state(n: NodeObs, leader: NodeObs | None, pg_states: Mapping[str, str]) -> SyncState | None:
    """A standby's sync state on its writer: "sync"/"quorum" once PostgreSQL waits for it AND
    Patroni recorded it in /sync (only then may a failover promote it); "potential" when
    PostgreSQL lists it but Patroni has not recorded it (yet); "async" otherwise. None for the
    writer, for nodes not streaming from it and in standby clusters. Pure."""
    if leader is None or not _is_writer(leader) or n.index == leader.index:
        return None
    state = _SYNC_STATES.get(pg_states.get(n.name))
    if state in ("sync", "quorum") and not _recorded(n):
        return "potential"
    return state


DEGRADED = ("durability degraded: no synchronous standby, commits are acknowledged by the writer alone "
            "(and Patroni does not fail over) until a standby is synchronous again")


def _progress(obs: ClusterObs, n: NodeObs, state: NodeRunState) -> list[ProgressUpdate]:
    if state == "running":
        return [ProgressUpdate(phase="prepare", min=0, max=100, current=100, unit="prepare_percent",
                               completed=True),
                ProgressUpdate(phase="finalize", completed=True)]
    if state != "starting":
        return []
    leader = obs.leader
    if leader is None or leader.index == n.index:
        return [ProgressUpdate(phase="prepare", min=0, max=100, current=0, unit="prepare_percent")]
    if obs.basebackups:
        streamed, total = obs.basebackups[0]
        return [ProgressUpdate(phase="prepare", max=100, current=100, unit="prepare_percent", completed=True),
                ProgressUpdate(phase="basebackup", min=0, max=total, current=streamed)]
    if n.has_data:
        return [ProgressUpdate(phase="finalize", completed=False)]
    return [ProgressUpdate(phase="prepare", min=0, max=100, current=0, unit="prepare_percent")]


def summarize(
    obs: ClusterObs,
    *,
    region: str,
    ports: ClusterPorts,
    ever_ready: bool,
    host: str = "127.0.0.1",
) -> ClusterStatus:
    spec, now = obs.spec, obs.now
    leader = obs.leader
    leader_lsn = node_lsn(leader) if leader else None
    pg_states = _pg_sync_states(leader)
    nodes: list[NodeStatus] = []
    for n in obs.wanted:
        state = _state(obs, n)
        lsn = node_lsn(n)
        lag = None
        if leader is not None and lsn is not None and leader_lsn is not None and n.index != leader.index:
            lag = max(0, leader_lsn - lsn)
        elif leader is not None and n.index == leader.index:
            lag = 0
        nodes.append(
            NodeStatus(
                name=n.name, host=host, pg_port=ports.pg(n.index), rest_port=ports.rest(n.index),
                role=_role(n), state=state, lsn=format_lsn(lsn), lag_bytes=lag,
                progress=_progress(obs, n, state),
                sync_state=node_sync_state(n, leader, pg_states),
            )
        )
    want_sync = sync_expected(spec)
    sync_standbys = [s.name for s in nodes if s.sync_state in ("sync", "quorum")] if want_sync else []

    messages: list[str] = []
    if not obs.etcd_healthy:
        messages.append("etcd of this region is not healthy; Patroni cannot elect a leader")
    for n in obs.wanted:
        why = node_failing(n) if spec.powered else None
        if why:
            messages.append(why)
    if obs.action_error:
        messages.append(obs.action_error)
    if obs.ensure_error:
        messages.append(f"could not create users/databases: {obs.ensure_error}")
    if obs.dcs_error:
        messages.append(f"cannot bring the DCS config in line with the spec: {obs.dcs_error}")
    if obs.held and obs.held_reason:
        messages.append(f"held: {obs.held_reason}")
    elif obs.held:
        messages.append("held: the agent restarted while this cluster was down; nothing starts until "
                        "the control plane PUTs its spec again")
    if spec.powered and not obs.held:
        for n in obs.wanted:
            if n.held_until is not None and n.held(now):
                messages.append(f"{n.name} was killed by a drill; it restarts in {n.held_until - now:.0f} s")
        if leader is None and ever_ready and not any(n.held(now) for n in obs.wanted):
            messages.append("no writer at the moment: waiting for Patroni to elect a leader")
        if want_sync and ever_ready and leader is not None and _is_writer(leader) and not sync_standbys:
            messages.append(DEGRADED)

    standby = spec.standby_of is not None
    ready = bool(
        spec.powered
        and not obs.held
        and leader is not None
        and (leader.rest_role == "standby_leader" if standby else _is_writer(leader))
        and obs.proxy_running
        and not obs.proxy_config_changed
        and all(s.state == "running" for s in nodes)
        and all(_streaming(n) for n in obs.wanted)
        and (standby or obs.ensured == (spec.generation, leader.name))
        and obs.endpoint_verified == leader.name
        # a failover only promotes a standby Patroni recorded in /sync: ready once there is one
        and (not want_sync or bool(sync_standbys))
    )
    phase: ClusterPhase
    if obs.held:
        busy = any(n.patroni_running or n.postmaster_running for n in obs.nodes)
        phase = "stopping" if busy else "stopped"
    elif not spec.powered:
        busy = any(n.patroni_running or n.postmaster_running for n in obs.nodes) or obs.proxy_running
        phase = "stopping" if busy else "stopped"
    elif ready or ever_ready:
        phase = "running"
    elif leader is None and any(node_failing(n) for n in obs.wanted):
        phase = "failed"
    else:
        phase = "creating"
    return ClusterStatus(
        cluster=spec.cluster,
        region=region,
        generation=spec.generation,
        phase=phase,
        ready=ready,
        message="; ".join(messages) or None,
        primary=Endpoint(host=host, port=ports.primary),
        replica=Endpoint(host=host, port=ports.replica),
        nodes=nodes,
        standby=standby,
        held=obs.held,
        lsn=lsn_info_from_rest(leader) if leader is not None else None,
        sync_standbys=sync_standbys,
    )
