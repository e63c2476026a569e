"""Port blocks of clusters: a fixed block per cluster, first free one, persisted in ports.json.

Block layout (8 ports): primary endpoint, replica endpoint, then (PostgreSQL, Patroni REST)
for nodes 1, 2, 3. Keeping the block fixed means a cluster keeps its ports when it grows or
shrinks, and when the agent restarts.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

BLOCK_SIZE = 8
MAX_NODES = 3


@dataclass(frozen=True)
class ClusterPorts:
    base: int

    @property
    def primary(self) -> int:
        return self.base

    @property
    def replica(self) -> int:
        return self.base + 1

    def pg(self, index: int) -> int:
        """PostgreSQL port of node ``index`` (1-based)."""
        if not 1 <= index <= MAX_NODES:
            raise ValueError(f"node index {index} out of range")
        return self.base + 2 * index

    def rest(self, index: int) -> int:
        """Patroni REST port of node ``index`` (1-based)."""
        if not 1 <= index <= MAX_NODES:
            raise ValueError(f"node index {index} out of range")
        return self.base + 2 * index + 1

    def all(self) -> list[int]:
        return list(range(self.base, self.base + BLOCK_SIZE))


def candidate_blocks(port_range: tuple[int, int]) -> list[int]:
    first, last = port_range
    return [b for b in range(first, last, BLOCK_SIZE) if b + BLOCK_SIZE <= last]


def choose_block(port_range: tuple[int, int], taken: AbstractSet[int],
                 busy_ports: AbstractSet[int] = frozenset()) -> int:
    """First block of ``port_range`` not in ``taken`` (block bases) and with no port in ``busy_ports``.

    Pure; raises ``LookupError`` when the range is exhausted.
    """
    for base in candidate_blocks(port_range):
        if base in taken:
            continue
        if any(p in busy_ports for p in range(base, base + BLOCK_SIZE)):
            continue
        return base
    raise LookupError(f"no free block of {BLOCK_SIZE} ports left in {port_range[0]}-{port_range[1] - 1}")


def load_ports(path: Path) -> ClusterPorts | None:
    try:
        return ClusterPorts(base=int(json.loads(path.read_text())["base"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_ports(path: Path, ports: ClusterPorts) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base": ports.base, "block_size": BLOCK_SIZE}))
    tmp.replace(path)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def allocate(clusters_dir: Path, cluster: str, port_range: tuple[int, int]) -> ClusterPorts:
    """The cluster's persisted block, or the first free one (persisted now). Not thread-safe:
    the caller serialises allocations of a region."""
    own = clusters_dir / cluster / "ports.json"
    existing = load_ports(own)
    if existing is not None:
        return existing
    taken: set[int] = set()
    if clusters_dir.is_dir():
        for d in clusters_dir.iterdir():
            p = load_ports(d / "ports.json")
            if p is not None:
                taken.add(p.base)
    busy: set[int] = set()
    for base in candidate_blocks(port_range):
        if base in taken:
            continue
        busy |= {p for p in range(base, base + BLOCK_SIZE) if port_in_use(p)}
        if not any(p in busy for p in range(base, base + BLOCK_SIZE)):
            break
    ports = ClusterPorts(choose_block(port_range, taken, busy))
    own.parent.mkdir(parents=True, exist_ok=True)
    save_ports(own, ports)
    return ports
