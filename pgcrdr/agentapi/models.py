"""The contract between the control plane and a region agent.

The control plane only ever talks to a region through these messages over HTTP (see
``pgcrdr.agentapi.client``), so an agent can run on another host. The agent is declarative: the
control plane PUTs the cluster it wants, the agent converges towards it in the background and
reports what it observes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

NodeRole = Literal["primary", "replica", "standby_leader", "unknown"]
NodeRunState = Literal["starting", "running", "stopped", "failed"]
# How a standby's commits count on its cluster's writer: "sync"/"quorum" once Patroni has recorded
# it in the /sync key (a failover may promote it: it holds every acknowledged commit), "potential"
# or "async" otherwise (pg_stat_replication's sync_state on the writer).
SyncState = Literal["sync", "quorum", "potential", "async"]
ClusterPhase = Literal["creating", "running", "stopping", "stopped", "failed", "deleting"]
ProgressPhase = Literal["prepare", "basebackup", "basebackup_prepare", "stream", "finalize"]
ProgressUnit = Literal["bytes_uncompressed", "bytes_compressed", "prepare_percent", "wal_lsn", "binlogs"]
BackupType = Literal["full", "diff", "incr"]
RebuildSource = Literal["rewind", "restore", "basebackup"]
RebuildPhase = Literal["prepare", "basebackup", "stream", "finalize"]
REBUILD_SOURCES: tuple[RebuildSource, ...] = ("rewind", "restore", "basebackup")  # the default order


class TLSMaterial(BaseModel):
    ca_cert_pem: str
    cert_pem: str
    key_pem: str


class DbUser(BaseModel):
    username: str
    password: str
    # "primary" is the service's admin user (avnadmin): it gets CREATEDB and CREATEROLE.
    kind: Literal["primary", "normal"] = "normal"


class StandbySource(BaseModel):
    """Where a standby cluster replicates from: an address that always reaches the source
    cluster's writer (its region's primary endpoint), through a slot kept on the source."""

    host: str
    port: int
    primary_slot_name: str | None = None


class BackupPolicy(BaseModel):
    """When the writer of a cluster is backed up into its region's pgBackRest repository.

    The first backup on each timeline is a full one (a new writer, after a failover or a
    failback, starts its own chain); then a full every ``full_interval_s`` and an incremental
    every ``incr_interval_s`` between them; ``retention_full`` full backups are kept."""

    enabled: bool = True
    full_interval_s: int = Field(default=86400, ge=60)
    incr_interval_s: int = Field(default=3600, ge=60)
    retention_full: int = Field(default=2, ge=1, le=100)
    archive_timeout_s: int = Field(default=60, ge=5, le=3600)


class RestoreSource(BaseModel):
    """Create the cluster from another cluster's backups in this region's repository (a fork):
    its newest backup taken before ``target_time``, then its archived WAL up to that time, then
    the cluster is promoted on a timeline of its own. Only at creation: once the first node's
    data is restored, the cluster is an ordinary one."""

    stanza: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$", description="the source cluster (its stanza)")
    target_time: str  # RFC 3339; the control plane has checked it against the source's backups


class ClusterSpec(BaseModel):
    """What one PostgreSQL service should look like in one region."""

    cluster: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$", description="unique within the region")
    node_count: int = Field(ge=1, le=3)
    powered: bool = True
    # Credentials of the internal roles that Patroni manages.
    superuser_password: str
    replication_password: str
    rewind_password: str
    users: list[DbUser] = Field(default_factory=list)
    databases: list[str] = Field(default_factory=lambda: ["defaultdb"])
    tls: TLSMaterial
    pg_parameters: dict[str, str] = Field(default_factory=dict)
    generation: int = 0
    # CRDR. A cluster with ``standby_of`` is a Patroni standby cluster: it never accepts writes
    # and replicates from the source (its users and passwords come from the source's data, so
    # the control plane sends the source's passwords here). ``permanent_slots`` are physical
    # slots the writer keeps for the other region.
    standby_of: StandbySource | None = None
    permanent_slots: list[str] = Field(default_factory=list)
    backup: BackupPolicy = Field(default_factory=BackupPolicy)
    # In-region synchronous replication for 2-3 nodes (Patroni synchronous_mode, not strict:
    # "on" with 2 nodes, "quorum" with 3, one synchronous standby). False forces asynchronous
    # replication (benchmarks). Replication to the other region is always asynchronous.
    sync_replication: bool = True
    restore_from: RestoreSource | None = None  # a fork: the data comes from another cluster's backups


class ProgressUpdate(BaseModel):
    phase: ProgressPhase
    min: int = 0
    max: int | None = None
    current: int | None = None
    unit: ProgressUnit = "bytes_uncompressed"
    completed: bool = False


class Endpoint(BaseModel):
    host: str
    port: int


class NodeStatus(BaseModel):
    name: str
    host: str
    pg_port: int
    rest_port: int
    role: NodeRole = "unknown"
    state: NodeRunState = "starting"
    lsn: str | None = None
    lag_bytes: int | None = None
    progress: list[ProgressUpdate] = Field(default_factory=list)
    sync_state: SyncState | None = None  # standbys of a writer cluster only


class ClusterStatus(BaseModel):
    cluster: str
    region: str
    generation: int = 0  # generation of the spec this status was computed for
    phase: ClusterPhase = "creating"
    ready: bool = False  # writer up, every node running and streaming, users and databases in place
    message: str | None = None  # a problem a user should see, e.g. "PostgreSQL did not start: ..."
    primary: Endpoint  # follows the writer (TLS passthrough proxy)
    replica: Endpoint  # reaches the standbys of this cluster (or the writer of a 1-node cluster)
    nodes: list[NodeStatus] = Field(default_factory=list)
    # CRDR
    standby: bool = False  # runs as a standby cluster (spec.standby_of is set)
    # After an agent restart a cluster is held (no process started) until the control plane
    # PUTs its spec again: a region that comes back from an outage must not start a writer the
    # control plane has since fenced.
    held: bool = False
    lsn: LsnInfo | None = None  # of the cluster's leader, when it answers
    # Standbys Patroni has recorded as synchronous (its /sync key) while synchronous replication
    # applies (a writer cluster of 2-3 nodes); empty otherwise. A cluster with synchronous
    # replication and none recorded has degraded durability (said in ``message``).
    sync_standbys: list[str] = Field(default_factory=list)
    backup: BackupStatus | None = None
    rebuild: RebuildState | None = None


class BackupInfo(BaseModel):
    """One backup in a region's pgBackRest repository (``pgbackrest info``)."""

    label: str
    type: BackupType
    start_time: str  # RFC 3339
    stop_time: str
    size: int  # database size restored from it (bytes)
    delta: int  # bytes copied by this backup
    repo_size: int  # bytes it takes in the repository (compressed)
    repo_delta: int
    lsn_start: str | None = None
    lsn_stop: str | None = None
    wal_start: str | None = None
    wal_stop: str | None = None
    timeline: int | None = None
    error: bool = False  # pgBackRest found page checksum errors while copying


class BackupRun(BaseModel):
    type: BackupType
    started: str
    size: int | None = None  # bytes to copy, when pgBackRest reports it
    done: int | None = None


class WalArchiveStatus(BaseModel):
    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_time: str | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_time: str | None = None
    archive_min: str | None = None  # oldest and newest WAL segment in the repository
    archive_max: str | None = None


class BackupStatus(BaseModel):
    """The cluster's backups and the health of its region's repository."""

    repository: str  # where: a path (posix) or a bucket URL
    stanza: str
    ok: bool = True
    message: str | None = None  # what is wrong with the repository or the last backup, for the user
    backups: list[BackupInfo] = Field(default_factory=list)
    running: BackupRun | None = None
    last_error: str | None = None
    last_error_time: str | None = None
    archive: WalArchiveStatus | None = None


class RebuildRequest(BaseModel):
    """Rebuild a fenced cluster as a standby of ``source`` (failback restore): the cheapest
    correct source first. The cluster must be powered off in its spec and stopped."""

    source: StandbySource
    fork_lsn: str  # where the active side's timeline forked from this cluster's history
    fork_timeline: int  # the active side's timeline that starts at fork_lsn
    sources: list[RebuildSource] = Field(default_factory=lambda: list(REBUILD_SOURCES))
    request_id: str = Field(min_length=1, max_length=64)


class RebuildAttempt(BaseModel):
    source: RebuildSource
    ok: bool = False
    skipped: bool = False
    reason: str | None = None  # why it was skipped or failed, or what it did
    cross_region_bytes: int | None = None  # bytes read from the active service's region
    local_bytes: int | None = None  # bytes read from this region (its pgBackRest repository)
    duration_s: float | None = None
    backup_label: str | None = None
    stream_start_lsn: str | None = None  # from here on the WAL comes from the active service


class RebuildState(BaseModel):
    request_id: str
    node: str  # the node rebuilt first (the others are cloned from it inside the region)
    state: Literal["running", "done", "failed"] = "running"
    phase: RebuildPhase = "prepare"
    progress_current: int | None = None
    progress_max: int | None = None
    attempts: list[RebuildAttempt] = Field(default_factory=list)
    chosen: RebuildSource | None = None
    # estimated bytes each source would move across regions, and the order that follows from them
    estimates: dict[str, int] = Field(default_factory=dict)
    unusable: dict[str, str] = Field(default_factory=dict)  # sources ruled out before trying, and why
    order: list[str] = Field(default_factory=list)
    message: str | None = None
    started: str
    finished: str | None = None


class LsnInfo(BaseModel):
    """WAL positions of a cluster's leader (writer or standby leader)."""

    node: str
    in_recovery: bool
    timeline: int | None = None
    current_lsn: str | None = None  # writer: pg_current_wal_lsn()
    receive_lsn: str | None = None  # standby: pg_last_wal_receive_lsn()
    replay_lsn: str | None = None  # standby: pg_last_wal_replay_lsn()
    replay_time: str | None = None  # standby: pg_last_xact_replay_timestamp(), RFC 3339
    lag_seconds: float | None = None  # standby: now() - pg_last_xact_replay_timestamp() when behind


class DemoteRequest(BaseModel):
    standby_of: StandbySource
    timeout: float = Field(default=30.0, gt=0, le=600)
    # Asked again with the same id, the agent answers the same way; once the id is cancelled
    # (POST /clusters/C/requests/ID/cancel) a late delivery of it is refused and changes nothing.
    request_id: str | None = Field(default=None, min_length=1, max_length=64)


class DemoteResult(BaseModel):
    node: str  # the writer that was shut down
    final_lsn: str  # pg_controldata "Latest checkpoint location" of that writer after its clean shutdown
    # from the request to the writer writing no more: its shutdown checkpoint in pg_control (or its
    # postmaster gone)
    writer_down_s: float


class PromoteRequest(BaseModel):
    timeout: float = Field(default=30.0, gt=0, le=600)
    request_id: str | None = Field(default=None, min_length=1, max_length=64)
    # Undo of a demote whose writer is stuck shutting down (e.g. a frozen walsender holds its
    # fast shutdown): stop that postmaster at once (every flushed commit survives crash
    # recovery), let Patroni restart it, then promote it.
    stop_stuck_writer: bool = False


class RequestState(BaseModel):
    """What became of a request id: ``cancelled`` means it never ran and never will."""

    request_id: str
    # refused: it answered 409 and changed nothing; failed: it may have changed something
    state: Literal["queued", "running", "done", "refused", "failed", "cancelled"]
    message: str | None = None


class PromoteResult(BaseModel):
    node: str
    promoted_s: float  # from the request to pg_is_in_recovery() = false
    switch_lsn: str | None = None  # replay LSN at promotion: where the new timeline forks
    timeline: int | None = None


class FenceRequest(BaseModel):
    # Set so that when the cluster is powered again it can only come back as a standby.
    standby_of: StandbySource | None = None


class FenceResult(BaseModel):
    killed_pids: list[int]
    last_lsn: str | None = None  # the most advanced "Latest checkpoint location"/end of WAL found on disk


class PreserveRequest(BaseModel):
    fork_lsn: str  # where the active side's timeline forked from this cluster's history
    # The job's key: asking again with the same id answers that job (idempotent). None: the
    # agent picks one (each such request is a new job; the copy itself is still not repeated).
    request_id: str | None = Field(default=None, min_length=1, max_length=64)


class DivergentCommit(BaseModel):
    lsn: str
    xid: int
    commit_time: str | None = None


class PreserveResult(BaseModel):
    path: str  # where the old data directory was kept
    bytes: int
    end_lsn: str | None = None
    commits: list[DivergentCommit] = Field(default_factory=list)  # commits after fork_lsn, never replicated


class PreserveState(BaseModel):
    """A preserve job: the copy runs in the background; ``GET .../preserve`` reports it."""

    request_id: str
    fork_lsn: str
    node: str | None = None  # whose data directory is kept (the most advanced one)
    state: Literal["running", "done", "failed"] = "running"
    message: str | None = None
    result: PreserveResult | None = None  # once done
    started: str  # RFC 3339
    finished: str | None = None


class SessionInfo(BaseModel):
    """One client session on a cluster's leader that is active or holds a transaction open."""

    pid: int
    usename: str | None = None
    datname: str | None = None
    application_name: str | None = None
    client_addr: str | None = None
    state: str | None = None  # active, idle in transaction, idle in transaction (aborted), ...
    xact_age_s: float | None = None  # now() - xact_start
    query_age_s: float | None = None  # now() - query_start
    wait_event_type: str | None = None
    wait_event: str | None = None
    query: str | None = None  # its first 200 characters


class SessionsInfo(BaseModel):
    node: str  # the leader the sessions were read on
    in_recovery: bool = False
    sessions: list[SessionInfo] = Field(default_factory=list)  # oldest transaction first


LsnInfo.model_rebuild()
ClusterStatus.model_rebuild()


class RegionHealth(BaseModel):
    region: str
    etcd_healthy: bool
    clusters: int
    message: str | None = None


class KillResult(BaseModel):
    node: str
    killed_pids: list[int]
