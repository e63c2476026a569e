"""What the control plane remembers about projects and services (persisted by the store)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pgcrdr.agentapi.models import ClusterStatus

ServiceState = Literal["REBUILDING", "RUNNING", "REBALANCING", "POWEROFF"]
DrRole = Literal["active", "passive", "failed"]
DrKind = Literal["primary", "recovery"]


class ServiceUser(BaseModel):
    username: str
    password: str
    type: Literal["primary", "normal"] = "normal"


class ProjectRecord(BaseModel):
    name: str
    create_time: str
    ca_cert_pem: str
    ca_key_pem: str
    default_cloud: str


class AutomaticFailover(BaseModel):
    """pgcrdr extension, kept on a pair's primary service: fail the pair over without a request
    when the active region has not answered for ``grace_seconds`` and the data it would give up
    (the last known lag) is at most ``max_data_loss_bytes``. Only with writer leases: the cut-off
    writer has stopped itself before the recovery is promoted."""

    enabled: bool = False
    grace_seconds: float = 30.0
    max_data_loss_bytes: int = 16 * 1024 * 1024


class ForkSource(BaseModel):
    """Where a fork's data comes from (pgcrdr.controlplane.forks); sent to the region agent, which
    restores it once."""

    project: str
    service: str
    cluster: str  # the source's cluster id: its stanza in its region's repository
    target_time: str  # RFC 3339, UTC


class ServiceRecord(BaseModel):
    project: str
    name: str
    service_type: str = "pg"
    plan: str
    cloud: str
    cluster: str  # the cluster id at the region agent
    create_time: str
    update_time: str
    # desired state
    powered: bool = True
    user_config: dict = Field(default_factory=dict)
    termination_protection: bool = False
    maintenance: dict = Field(default_factory=lambda: {"dow": "sunday", "time": "04:00:00"})
    tags: dict[str, str] = Field(default_factory=dict)
    tech_emails: list[dict] = Field(default_factory=list)
    users: list[ServiceUser] = Field(default_factory=list)
    databases: list[str] = Field(default_factory=lambda: ["defaultdb"])
    superuser_password: str
    replication_password: str
    rewind_password: str
    tls_cert_pem: str
    tls_key_pem: str
    generation: int = 1  # bumped on every change the region must apply
    deleting: bool = False
    # The Service URI: an endpoint run by the control plane (outside every region) so it never
    # changes across failover, switchover and failback. A recovery service uses its primary's.
    endpoint_direct_port: int | None = None
    endpoint_pooled_port: int | None = None
    # CRDR
    dr_role: DrRole | None = None
    dr_kind: DrKind | None = None  # which side of the pair this service is, for good
    dr_peer: str | None = None
    standby_of: str | None = None  # name of the service this one replicates from (passive side)
    permanent_slots: list[str] = Field(default_factory=list)
    # observed state
    state: ServiceState = "REBUILDING"
    applied_generation: int = 0
    ever_ready: bool = False  # first readiness after create / power-on moves REBUILDING -> RUNNING
    message: str | None = None
    status: ClusterStatus | None = None
    status_time: float | None = None  # when ``status`` was last read from the region (epoch seconds)
    automatic_failover: AutomaticFailover | None = None  # on a pair's primary (pgcrdr extension)
    fork: ForkSource | None = None  # created from another service's backups
    # A drill's fork of this production pair's primary (or the fork's recovery copy): such a pair
    # is removed as a whole, in any state (pgcrdr drill; its Ctrl-C must not need a failback)
    drill_of: str | None = None

    @property
    def primary_user(self) -> ServiceUser:
        for u in self.users:
            if u.type == "primary":
                return u
        raise LookupError("service has no primary user")


class IntegrationRecord(BaseModel):
    integration_id: str
    project: str
    integration_type: str = "disaster_recovery"
    source: str  # the active service
    dest: str  # the passive service
    create_time: str


class StepRecord(BaseModel):
    name: str
    state: Literal["pending", "running", "done", "failed", "skipped"] = "pending"
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    detail: str | None = None


OperationKind = Literal["setup", "switchover", "switchback", "failover", "failback_restore", "failback_promote",
                        "repair"]
OperationState = Literal["running", "done", "failed", "undone"]


class OperationRecord(BaseModel):
    operation_id: str
    project: str
    pair: str  # the primary service's name: one operation per pair at a time
    kind: OperationKind
    service: str  # the service whose role change was requested
    requested_role: str
    source: str  # writer before
    target: str  # writer after
    state: OperationState = "running"
    steps: list[StepRecord] = Field(default_factory=list)
    data: dict = Field(default_factory=dict)  # step outputs needed by later steps (LSNs, timings)
    create_time: str
    finish_time: str | None = None
    write_pause_s: float | None = None
    data_loss: dict | None = None
    message: str | None = None

    def step(self, name: str) -> StepRecord:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


DrillKind = Literal["switchover", "failover"]


class DrillRecord(BaseModel):
    """A rehearsal of a pair's moves (``pgcrdr drill switchover|failover``) and its report, kept
    with the production pair but apart from its operations: a drill on a fork ran no operation
    on the pair itself, and its history must say so."""

    drill_id: str
    project: str
    pair: str  # the production pair's primary service
    kind: DrillKind
    in_place: bool
    state: Literal["done", "failed", "interrupted"]
    create_time: str
    finish_time: str | None = None
    report: dict = Field(default_factory=dict)  # pgcrdr.drill.report.DrillReport, as JSON
