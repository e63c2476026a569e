"""Service URI endpoints run by the control plane: a direct URI (HAProxy, TLS passthrough) and a
pooled URI (PgBouncer, transaction mode) per CRDR pair, repointed during role changes."""

from pgcrdr.endpoint.manager import EndpointManager, stop_all_endpoints
from pgcrdr.endpoint.models import EndpointError, EndpointSpec, EndpointStatus, PauseTimeout
from pgcrdr.endpoint.render import allocate_ports

__all__ = ["EndpointError", "EndpointManager", "EndpointSpec", "EndpointStatus", "PauseTimeout",
           "allocate_ports", "stop_all_endpoints"]
