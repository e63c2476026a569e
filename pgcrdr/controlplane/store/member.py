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


class MemberSecretsError(ValueError):
    """The member's TLS bundle is missing a file (the message names it and what to run)."""


def tls_flags(member: StoreMember, bundle: Path | None) -> list[str]:
    """etcd's TLS settings for a member with ``tls``: clients and peers are served with the
    member's certificate, and each must present one of the deployment's CA (a process on the
    network without one can neither read nor write the control plane's state)."""
    if not member.tls:
        return []
    from pgcrdr.security.deployment import CA_CERT, MEMBER_CERT, MEMBER_KEY

    files = {}
    for name in (CA_CERT, MEMBER_CERT, MEMBER_KEY):
        path = bundle / name if bundle is not None else None
        if path is None or not path.is_file():
            raise MemberSecretsError(
                f"the TLS bundle of store member {member.name} has no {name} (looked in {bundle}): make the "
                f"secrets with `pgcrdr secrets --topology FILE --out DIR` and copy DIR/store-{member.name} "
                "to this host, then pass it with --secrets")
        files[name] = str(path)
    cert, key, ca = files[MEMBER_CERT], files[MEMBER_KEY], files[CA_CERT]
    return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"]


def member_argv(topology: Topology, member: StoreMember, data_dir: Path, bundle: Path | None = None) -> list[str]:
    initial = ",".join(f"{m.name}={m.peer_url}" for m in topology.store_members)
    return [ETCD, "--name", member.name, "--data-dir", str(data_dir), *tls_flags(member, bundle),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", cluster_token(topology),
            "--auto-compaction-retention", COMPACTION_RETENTION, "--max-txn-ops", str(MAX_TXN_OPS),
            "--logger", "zap", "--log-outputs", "stderr"]


def member_data_dir(home: Path, member: StoreMember) -> Path:
    return home / "store" / member.name
