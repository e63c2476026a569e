"""Where a region agent keeps each file of a region and of its clusters.

One place for the directory layout so that the agent, ``stop_region_processes`` (which must
work while the agent is dead) and the tests agree on it::

    <region_dir>/
      etcd/                          etcd data (0700, node user)
      run/                           pid files of every child: etcd.pid, <cluster>.proxy.pid,
                                     <cluster>-<i>.patroni.pid; etcd.log; s-<hash>/ Unix socket
                                     dirs of nodes whose own directory path is too long
      backrest/                      pgBackRest: pgbackrest.conf (one stanza per cluster), repo/
                                     (the region's repository), log/, lock/, spool/
      clusters/<cluster>/
        spec.json                    the last accepted ClusterSpec
        rebuild.json                 the last failback rebuild (source tried, bytes, state)
        preserved/<stamp>/data       old writers' data directories kept aside before a failback
        ports.json                   the port block allocated to the cluster
        tls/                         ca.crt, server.crt, server.key (0600)
        haproxy.cfg, haproxy.log
        nodes/<cluster>-<i>/
          patroni.yml, patroni.log, pgpass
          data/                      PGDATA (0700)
          pglog/                     PostgreSQL's own log
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# A Unix socket path may not exceed 107 bytes; ".s.PGSQL.NNNNN.lock" needs 20 of them.
_MAX_SOCKET_DIR = 85
_MAX_SOCKET_PATH = 90  # sun_path holds 107 bytes; HAProxy binds "<path>.<pid>.tmp" first (its limit: 97)


def node_name(cluster: str, index: int) -> str:
    """Nodes are named <cluster>-1, <cluster>-2, <cluster>-3 (index is 1-based)."""
    return f"{cluster}-{index}"


def node_index(cluster: str, name: str) -> int | None:
    """The 1-based index of a node name of this cluster, or None if it is not one."""
    prefix = f"{cluster}-"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    if rest not in ("1", "2", "3"):
        return None
    return int(rest)


@dataclass(frozen=True)
class RegionLayout:
    region_dir: Path

    @property
    def etcd_dir(self) -> Path:
        return self.region_dir / "etcd"

    @property
    def run_dir(self) -> Path:
        return self.region_dir / "run"

    @property
    def clusters_dir(self) -> Path:
        return self.region_dir / "clusters"

    @property
    def etcd_pid(self) -> Path:
        return self.run_dir / "etcd.pid"

    @property
    def etcd_log(self) -> Path:
        return self.run_dir / "etcd.log"

    def cluster(self, cluster: str) -> ClusterLayout:
        return ClusterLayout(self, cluster)


@dataclass(frozen=True)
class ClusterLayout:
    region: RegionLayout
    name: str

    @property
    def dir(self) -> Path:
        return self.region.clusters_dir / self.name

    @property
    def spec_file(self) -> Path:
        return self.dir / "spec.json"

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.tls_dir / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.tls_dir / "server.key"

    @property
    def proxy_cfg(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def proxy_log(self) -> Path:
        return self.dir / "haproxy.log"

    @property
    def proxy_pid(self) -> Path:
        return self.region.run_dir / f"{self.name}.proxy.pid"

    @property
    def proxy_socket(self) -> Path:
        """HAProxy's runtime API (stats socket, mode 600) in a directory of the node user's
        (HAProxy runs as it): ``run/`` of the cluster directory when the path fits a Unix
        socket's, else a hashed directory under the region's run dir or /tmp."""
        own = self.dir / "run"
        return _short_dir(own, self.region.run_dir, "h-", "pgcrdr-haproxy-", _MAX_SOCKET_PATH, "haproxy.sock")

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    def data_dir(self, node: str) -> Path:
        return self.node_dir(node) / "data"

    def pg_log_dir(self, node: str) -> Path:
        return self.node_dir(node) / "pglog"

    def patroni_yml(self, node: str) -> Path:
        return self.node_dir(node) / "patroni.yml"

    def patroni_log(self, node: str) -> Path:
        return self.node_dir(node) / "patroni.log"

    def pgpass(self, node: str) -> Path:
        return self.node_dir(node) / "pgpass"

    def patroni_pid(self, node: str) -> Path:
        return self.region.run_dir / f"{node}.patroni.pid"

    def socket_dir(self, node: str) -> Path:
        """Where PostgreSQL puts its Unix socket: the node directory when its path is short
        enough, else a hashed directory under the region's run dir, else under /tmp."""
        d = self.node_dir(node)
        return _short_dir(d, self.region.run_dir, "s-", "pgcrdr-sock-", _MAX_SOCKET_DIR)


def _short_dir(own: Path, run_dir: Path, run_prefix: str, tmp_prefix: str, limit: int, leaf: str = "") -> Path:
    """``own / leaf`` (``own`` without a leaf) when that path fits in ``limit`` bytes (a Unix
    socket's path), else the same under a directory named by a hash of it in ``run_dir``, else
    in /tmp."""
    wanted = own / leaf if leaf else own
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:12]
    for d in (own, run_dir / f"{run_prefix}{digest}"):
        path = d / leaf if leaf else d
        if len(str(path)) <= limit:
            return path
    d = Path("/tmp") / f"{tmp_prefix}{digest}"
    return d / leaf if leaf else d
