"""The clusters of a region as the agent holds them between ticks (not persisted, except the
spec), and the registry the agent's parts share to find them."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pgcrdr.agent.errors import NotFound
from pgcrdr.agent.layout import ClusterLayout, node_name
from pgcrdr.agent.patroni import NodePaths
from pgcrdr.agent.ports import ClusterPorts
from pgcrdr.agentapi.models import (
    BackupStatus,
    BackupType,
    ClusterSpec,
    ClusterStatus,
    DemoteResult,
    PreserveState,
    PromoteResult,
    RebuildState,
    RequestState,
)


@dataclass
class NodeRuntime:
    """What the agent remembers about a node between ticks (not persisted)."""

    pid: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    expected_running: bool = False
    failures: int = 0
    last_start: float | None = None
    held_until: float | None = None


@dataclass
class ClusterRuntime:
    spec: ClusterSpec
    layout: ClusterLayout
    ports: ClusterPorts
    act_lock: threading.Lock = field(default_factory=threading.Lock)
    nodes: dict[int, NodeRuntime] = field(default_factory=lambda: {i: NodeRuntime() for i in (1, 2, 3)})
    proxy_pid: int | None = None
    ensured: tuple[int, str] | None = None
    ensure_error: str | None = None
    action_error: str | None = None
    ever_ready: bool = False
    created_at: float | None = None  # monotonic time its first spec was PUT (None: resumed from disk)
    copying: bool = False  # a node is being copied from its source (pg_basebackup under Patroni)
    # (leader, streaming replicas) for which both endpoints were seen routing correctly
    endpoint_verified: tuple[str, tuple[str, ...]] | None = None
    status: ClusterStatus | None = None
    deleted: bool = False
    thread: threading.Thread | None = None
    last_reason: str = ""
    # CRDR
    held: bool = False  # resumed with nothing running: start nothing until the spec is PUT again
    held_reason: str | None = None  # why, when it is not that (the writer lease was lost)
    dcs_synced: bool = True
    dcs_error: str | None = None
    last_demote: DemoteResult | None = None
    last_promote: PromoteResult | None = None
    # request ids of demote/promote calls and what became of them (see Crdr._tracked)
    requests: dict[str, RequestState] = field(default_factory=dict)
    # backups (pgcrdr.agent.backups) and failback rebuilds (pgcrdr.agent.rebuild)
    backup_status: BackupStatus | None = None
    backup_thread: threading.Thread | None = None
    stanza_ok: bool = False
    backup_info_at: float = 0.0
    backup_requested: BackupType | None = None
    backup_failed_at: float | None = None
    backup_pid: int | None = None
    rebuild: RebuildState | None = None
    rebuild_active: bool = False
    # preserve jobs (pgcrdr.agent.crdr): nothing starts on the cluster while its data is copied
    preserve: PreserveState | None = None
    preserve_active: bool = False

    def data_dirs(self) -> dict[str, Path]:
        """{node name: data directory} of the three possible nodes."""
        return {node_name(self.spec.cluster, i): self.layout.data_dir(node_name(self.spec.cluster, i))
                for i in (1, 2, 3)}

    def node_paths(self, name: str) -> NodePaths:
        lay = self.layout
        return NodePaths(
            data_dir=lay.data_dir(name), socket_dir=lay.socket_dir(name), pg_log_dir=lay.pg_log_dir(name),
            pgpass=lay.pgpass(name), cert_file=lay.cert_file, key_file=lay.key_file, ca_file=lay.ca_file,
        )


class ClusterRegistry:
    """The region's clusters by name. ``lock`` (reentrant) guards changes that must be seen
    whole: registering, a spec replaced, request ids recorded. Listing copies the dict without
    it (one step under the GIL), so a thread holding another lock never waits for this one (the
    pgbackrest.conf writer did, and deadlocked the agent)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._clusters: dict[str, ClusterRuntime] = {}

    def find(self, name: str) -> ClusterRuntime | None:
        """The cluster, even while it is being deleted."""
        with self.lock:
            return self._clusters.get(name)

    def get(self, name: str) -> ClusterRuntime:
        """The cluster; NotFound when unknown or being deleted."""
        c = self.find(name)
        if c is None or c.deleted:
            raise NotFound(name)
        return c

    def add(self, c: ClusterRuntime) -> None:
        with self.lock:
            self._clusters[c.spec.cluster] = c

    def remove(self, name: str) -> None:
        with self.lock:
            self._clusters.pop(name, None)

    def all(self) -> list[ClusterRuntime]:
        return list(self._clusters.values())

    def names(self) -> list[str]:
        return sorted(self._clusters)

    def __len__(self) -> int:
        return len(self._clusters)


def persist_spec(layout: ClusterLayout, spec: ClusterSpec) -> None:
    """spec.json, replaced atomically: what an agent restarted at any point comes back with."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.dir.chmod(0o755)
    tmp = layout.spec_file.with_suffix(".tmp")
    tmp.write_text(spec.model_dump_json())
    tmp.chmod(0o600)
    tmp.replace(layout.spec_file)
