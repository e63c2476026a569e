"""Where pgcrdr keeps its state and which ports it uses.

Everything is derived from three knobs so that two instances can run side by side:
``PGCRDR_HOME`` (all state), ``PGCRDR_PORT_BASE`` and ``PGCRDR_PORT_OFFSET`` (all ports).

Port layout, relative to ``base + offset``::

    +0            control-plane API and console
    +1000*(i+1)   agent of region i
      +1, +2      etcd client and peer ports of region i
      +10..+999   ports handed out to services of region i (PostgreSQL, Patroni REST, endpoints)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgcrdr.etcdv3 import StoreTLS
    from pgcrdr.topology import Topology

DEFAULT_HOME = Path("/var/lib/pgcrdr")
DEFAULT_PORT_BASE = 25000
REGION_PORT_BLOCK = 1000
SERVICE_PORTS_START = 10
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
DEFAULT_OS_USER = "pgcrdr"
DEFAULT_NODE_VENV = Path("/opt/pgcrdr/node-venv")


@dataclass(frozen=True)
class RegionConfig:
    """One region ("cloud" in the Aiven API) and the ports it owns."""

    index: int
    cloud_name: str
    description: str
    geo_region: str
    geo_latitude: float
    geo_longitude: float
    port_base: int  # first port of this region's block
    host: str | None = None  # its host's address (a topology); None: the local host of Settings

    @property
    def agent_port(self) -> int:
        return self.port_base

    @property
    def etcd_client_port(self) -> int:
        return self.port_base + 1

    @property
    def etcd_peer_port(self) -> int:
        return self.port_base + 2

    @property
    def service_port_range(self) -> tuple[int, int]:
        """Half-open range [first, last) of ports that services of this region may use."""
        return (self.port_base + SERVICE_PORTS_START, self.port_base + REGION_PORT_BLOCK)

    @property
    def slug(self) -> str:
        """Directory-safe name of the region."""
        return self.cloud_name


_DEFAULT_REGIONS = [
    ("local-europe-west1", "Europe, Belgium - Local: Region A", "europe", 50.45, 3.82),
    ("local-us-east1", "United States, South Carolina - Local: Region B", "north america", 33.84, -81.16),
]


def _regions_from_env(base: int) -> list[RegionConfig]:
    """Regions from ``PGCRDR_REGIONS`` ("name1,name2"), or the two default local regions."""
    raw = os.environ.get("PGCRDR_REGIONS", "").strip()
    specs: list[tuple[str, str, str, float, float]]
    if raw:
        specs = []
        for name in [n.strip() for n in raw.split(",") if n.strip()]:
            specs.append((name, f"Local region {name}", "local", 0.0, 0.0))
    else:
        specs = list(_DEFAULT_REGIONS)
    return [
        RegionConfig(
            index=i,
            cloud_name=name,
            description=desc,
            geo_region=geo,
            geo_latitude=lat,
            geo_longitude=lon,
            port_base=base + REGION_PORT_BLOCK * (i + 1),
        )
        for i, (name, desc, geo, lat, lon) in enumerate(specs)
    ]


def _seconds(name: str, default: float, low: float, high: float) -> float:
    """A duration setting from the environment, refused clearly when it is not a number in range."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw[:40]!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value:g} is out of range: use {low:g} to {high:g} seconds")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    port_base: int
    host: str = "127.0.0.1"
    os_user: str = DEFAULT_OS_USER
    node_venv: Path = DEFAULT_NODE_VENV
    pg_bin_dir: Path = PG_BIN_DIR
    regions: list[RegionConfig] = field(default_factory=list)
    # The whole window in which a planned move holds pooled writes (PAUSE ... RESUME): past it
    # the pooler is resumed at once and the move undone (PGCRDR_PAUSE_DEADLINE, seconds).
    pause_deadline_s: float = 5.0
    # How long a step that changed nothing yet retries a part that does not answer before the
    # operation fails, saying so (PGCRDR_RETRY_BOUND, seconds).
    retry_bound_s: float = 30.0
    # A region may run a writer only while it renews its lease in the global etcd, when the
    # deployment has one (pgcrdr.writer_lease; PGCRDR_WRITER_LEASE_TTL, seconds).
    writer_lease_ttl_s: float = 10.0
    # A deployment on its own hosts (a topology file): the secrets bundle of this part
    # (``pgcrdr.security.deployment``). Agents then serve their API over TLS with a certificate of
    # the deployment's CA, and the control plane verifies it. None: the embedded default, where
    # the agents answer on this machine's loopback only.
    secrets_dir: Path | None = None
    # The global etcd a topology file names for the control plane's state (``[control] store``).
    store_endpoints: tuple[str, ...] = ()
    # This control plane's host in the topology (its replica's name in the leader election).
    control_host: str = "local"
    # Every control host's address (a topology): each replica serves the Service URIs on its own.
    control_addresses: tuple[str, ...] = ()
    # The lease of the control-plane leader's key, whole seconds (PGCRDR_LEADER_TTL): a dead
    # leader is replaced within about this long; it is renewed every third of it.
    leader_ttl_s: int = 5

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None, port_offset: int | None = None,
                 port_base: int | None = None) -> Settings:
        home_path = Path(home or os.environ.get("PGCRDR_HOME") or DEFAULT_HOME).resolve()
        base = port_base if port_base is not None else int(os.environ.get("PGCRDR_PORT_BASE", DEFAULT_PORT_BASE))
        offset = port_offset if port_offset is not None else int(os.environ.get("PGCRDR_PORT_OFFSET", 0))
        return cls(
            home=home_path,
            port_base=base + offset,
            os_user=os.environ.get("PGCRDR_OS_USER", DEFAULT_OS_USER),
            node_venv=Path(os.environ.get("PGCRDR_NODE_VENV", DEFAULT_NODE_VENV)),
            pg_bin_dir=Path(os.environ.get("PGCRDR_PG_BIN", PG_BIN_DIR)),
            regions=_regions_from_env(base + offset),
            pause_deadline_s=_seconds("PGCRDR_PAUSE_DEADLINE", 5.0, 0.5, 120.0),
            retry_bound_s=_seconds("PGCRDR_RETRY_BOUND", 30.0, 1.0, 3600.0),
            leader_ttl_s=round(_seconds("PGCRDR_LEADER_TTL", 5.0, 2.0, 60.0)),
            writer_lease_ttl_s=_seconds("PGCRDR_WRITER_LEASE_TTL", 10.0, 2.0, 300.0),
        )

    @property
    def api_port(self) -> int:
        return self.port_base

    @property
    def endpoint_port_range(self) -> tuple[int, int]:
        """Half-open range of ports for Service URIs run by the control plane (outside every region)."""
        return (self.port_base + 100, self.port_base + REGION_PORT_BLOCK)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def control_dir(self) -> Path:
        return self.home / "control"

    @property
    def db_path(self) -> Path:
        return self.control_dir / "pgcrdr.sqlite3"

    @property
    def run_dir(self) -> Path:
        """PID files and logs of the processes `pgcrdr up` started."""
        return self.home / "run"

    def region_dir(self, region: RegionConfig) -> Path:
        return self.home / "regions" / region.slug

    def region(self, cloud_name: str) -> RegionConfig | None:
        for r in self.regions:
            if r.cloud_name == cloud_name:
                return r
        return None

    def agent_url(self, region: RegionConfig) -> str:
        scheme = "https" if self.secrets_dir is not None else "http"
        return f"{scheme}://{region.host or self.host}:{region.agent_port}"

    @property
    def agent_verify(self) -> str | bool:
        """How a client verifies an agent: the deployment's CA when there is one."""
        return str(self.secrets_dir / "ca.crt") if self.secrets_dir is not None else True

    @property
    def store_tls(self) -> StoreTLS | None:
        """The TLS files this part presents to the global etcd (https members): the deployment's CA
        and the client certificate of its secrets bundle; None without a bundle."""
        from pgcrdr.security.deployment import store_client_tls

        return store_client_tls(self.secrets_dir) if self.secrets_dir is not None else None

    @property
    def agent_token_path(self) -> Path:
        return (self.secrets_dir if self.secrets_dir is not None else self.control_dir) / "agent-token"

    @classmethod
    def from_topology(cls, topology: Topology, home: str | os.PathLike[str] | None = None,
                      region: str | None = None, control_host: str | None = None,
                      secrets: str | os.PathLike[str] | None = None) -> Settings:
        """Settings of one part of a deployment: the agent of ``region`` (it binds to its host's
        address), or the control plane on ``control_host`` (default: the first one). Ports come
        from the topology; the secrets bundle from ``secrets`` (default: ``<home>/secrets``);
        everything else from the environment, as ``from_env``."""
        env = cls.from_env(home=home)
        secrets_dir = Path(secrets).resolve() if secrets is not None else env.home / "secrets"
        regions = [RegionConfig(index=i, cloud_name=r.cloud_name, description=r.description,
                                geo_region=r.geo_region, geo_latitude=r.latitude, geo_longitude=r.longitude,
                                port_base=r.port_base, host=r.host)
                   for i, r in enumerate(topology.regions)]
        if region is not None:
            found = topology.region(region)
            if found is None:
                raise ValueError(f"{topology.source}: no region {region!r} (regions: "
                                 f"{', '.join(r.cloud_name for r in topology.regions)})")
            host, replica = found.host, env.control_host
        else:
            ctl = next((h for h in topology.control_hosts if control_host in (None, h.name)), None)
            if ctl is None:
                raise ValueError(f"{topology.source}: no control host {control_host!r}")
            host, replica = ctl.address, ctl.name
        return replace(env, host=host, port_base=topology.api_port, regions=regions, secrets_dir=secrets_dir,
                       store_endpoints=topology.store_endpoints, control_host=replica,
                       control_addresses=tuple(h.address for h in topology.control_hosts))
