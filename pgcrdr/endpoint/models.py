"""What the control plane asks of a Service URI endpoint, and what it reports back."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from pgcrdr.agentapi.models import DbUser, Endpoint, TLSMaterial

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"


class EndpointError(RuntimeError):
    """An endpoint operation failed; the message says what and why."""


class PauseTimeout(EndpointError):
    """PAUSE did not complete in time (a transaction stayed open); the pooler was resumed."""


class EndpointSpec(BaseModel):
    """One Service URI pair: a direct URI (HAProxy, TLS passthrough) and a pooled URI (PgBouncer,
    transaction mode), both forwarding to ``target``, the active service's regional primary
    endpoint. ``target`` None: no writer right now, new connections are refused."""

    name: str = Field(pattern=NAME_PATTERN, description="e.g. the service name pg-demo-1a2b3c")
    direct_port: int = Field(ge=1, le=65535)
    pooled_port: int = Field(ge=1, le=65535)
    target: Endpoint | None = None
    users: list[DbUser] = Field(default_factory=list)
    tls: TLSMaterial

    @model_validator(mode="after")
    def _distinct_ports(self) -> EndpointSpec:
        if self.direct_port == self.pooled_port:
            raise ValueError("direct_port and pooled_port must differ")
        return self


class EndpointStatus(BaseModel):
    name: str
    direct: Endpoint  # Service URI host:port, TLS passthrough to the target
    pooled: Endpoint  # PgBouncer, transaction mode
    target: Endpoint | None = None
    paused: bool = False
    running: bool = False  # both processes are up
    message: str | None = None  # what is wrong, or why connections are refused
    haproxy_pid: int | None = None
    pgbouncer_pid: int | None = None
