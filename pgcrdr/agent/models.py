"""The contract between the control plane and a region agent.

The control plane only ever talks to a region through these messages over HTTP (see
``pgcrdr.agent.client``), so an agent can run on another host. The agent is declarative: the
control plane PUTs the cluster it wants, the agent converges towards it in the background and
reports what it observes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

NodeRole = Literal["primary", "replica", "standby_leader", "unknown"]
NodeRunState = Literal["starting", "running", "stopped", "failed"]
ClusterPhase = Literal["creating", "running", "stopping", "stopped", "failed", "deleting"]


class TLSMaterial(BaseModel):
    ca_cert_pem: str
    cert_pem: str
    key_pem: str


class DbUser(BaseModel):
    username: str
    password: str
    # "primary" is the service's admin user (avnadmin): it gets CREATEDB and CREATEROLE.
    kind: Literal["primary", "normal"] = "normal"


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


class ProgressUpdate(BaseModel):
    phase: Literal["prepare", "basebackup", "basebackup_prepare", "stream", "finalize"]
    min: int = 0
    max: int | None = None
    current: int | None = None
    unit: Literal["bytes_uncompressed", "bytes_compressed", "prepare_percent", "wal_lsn", "binlogs"] = (
        "bytes_uncompressed"
    )
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


class RegionHealth(BaseModel):
    region: str
    etcd_healthy: bool
    clusters: int
    message: str | None = None


class KillResult(BaseModel):
    node: str
    killed_pids: list[int]
