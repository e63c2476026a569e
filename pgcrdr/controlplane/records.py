"""What the control plane remembers about projects and services (persisted by the store)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pgcrdr.agent.models import ClusterStatus

ServiceState = Literal["REBUILDING", "RUNNING", "REBALANCING", "POWEROFF"]


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
    # observed state
    state: ServiceState = "REBUILDING"
    applied_generation: int = 0
    ever_ready: bool = False  # first readiness after create / power-on moves REBUILDING -> RUNNING
    message: str | None = None
    status: ClusterStatus | None = None

    @property
    def primary_user(self) -> ServiceUser:
        for u in self.users:
            if u.type == "primary":
                return u
        raise LookupError("service has no primary user")
