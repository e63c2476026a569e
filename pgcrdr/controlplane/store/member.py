"""One member of the global etcd, on its host (``pgcrdr store-member --topology F --name N``).

The members are listed in the topology (``[[control.store_members]]``); each one is the same
Debian ``/usr/bin/etcd`` the agents run for their regions, with its data in its host's home.
"""

from __future__ import annotations

from pathlib import Path

from pgcrdr.topology import StoreMember, Topology

ETCD = "/usr/bin/etcd"
# Every write keeps history until compacted: keep one hour of it (etcd's periodic mode).
COMPACTION_RETENTION = "1"
# A store transaction compares every key it read: allow more than etcd's default 128.
MAX_TXN_OPS = 1024


def cluster_token(topology: Topology) -> str:
    """The same on every member, different for another deployment's cluster."""
    return "pgcrdr-store-" + "-".join(m.name for m in topology.store_members)


def member_argv(topology: Topology, member: StoreMember, data_dir: Path) -> list[str]:
    initial = ",".join(f"{m.name}={m.peer_url}" for m in topology.store_members)
    return [ETCD, "--name", member.name, "--data-dir", str(data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", cluster_token(topology),
            "--auto-compaction-retention", COMPACTION_RETENTION, "--max-txn-ops", str(MAX_TXN_OPS),
            "--logger", "zap", "--log-outputs", "stderr"]


def member_data_dir(home: Path, member: StoreMember) -> Path:
    return home / "store" / member.name
