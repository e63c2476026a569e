"""Patroni node configuration (pure rendering) and its REST API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pgcrdr.agent.localhttp import LOCAL
import yaml

from pgcrdr.agent.dcs import crdr_dcs
from pgcrdr.agent.etcd import NAMESPACE
from pgcrdr.agentapi.models import ClusterSpec

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
REWIND_USER = "rewind_user"
RESERVED_ROLES = {SUPERUSER, REPLICATION_USER, REWIND_USER}

# Parameters Patroni requires to be equal on every node: they go to the DCS at bootstrap.
DCS_PARAMETERS: dict[str, Any] = {
    "wal_level": "replica",
    "hot_standby": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_log_hints": "on",
    "max_connections": 100,
}

# Parameters the agent manages itself; a spec may not override them.
MANAGED_PARAMETERS = frozenset(
    set(DCS_PARAMETERS)
    | {"listen_addresses", "port", "data_directory", "hba_file", "ident_file", "config_file",
       "ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "unix_socket_directories",
       "password_encryption", "logging_collector", "log_directory", "log_filename", "cluster_name",
       "archive_command", "archive_mode", "archive_timeout", "restore_command", "primary_conninfo", "primary_slot_name",
       # Patroni owns synchronous_standby_names (synchronous_mode); the server default of
       # synchronous_commit is what makes an acknowledged commit survive a node loss.
       "synchronous_standby_names", "synchronous_commit"}
)

def pg_hba(host: str = "127.0.0.1") -> list[str]:
    """Who may connect: TLS only, from this machine's loopback and from the region host's own
    address. Everything from outside the region arrives through the region's proxy (HAProxy on
    the host's address), so a node sees the host's address as the peer of a standby in another
    region, of the control host's Service URI endpoints and of a failback's copy."""
    sources = ["127.0.0.1/32"] + ([f"{host}/32"] if host != "127.0.0.1" else [])
    return (["local all all scram-sha-256"]
            + [f"hostssl {db} all {src} scram-sha-256" for src in sources for db in ("all", "replication")]
            + ["hostnossl all all 0.0.0.0/0 reject"])


@dataclass(frozen=True)
class NodePaths:
    data_dir: Path
    socket_dir: Path
    pg_log_dir: Path
    pgpass: Path
    cert_file: Path
    key_file: Path
    ca_file: Path


def render_patroni_config(
    spec: ClusterSpec,
    name: str,
    *,
    pg_port: int,
    rest_port: int,
    etcd_port: int,
    paths: NodePaths,
    pg_bin_dir: Path,
    host: str = "127.0.0.1",
    archive_command: str | None = None,
) -> dict[str, Any]:
    """The patroni.yml of one node, as a dict. Pure. ``archive_command``: push WAL to the
    region's pgBackRest repository (only the writer archives; ``archive_mode=on``)."""
    local_params: dict[str, Any] = {
        "unix_socket_directories": str(paths.socket_dir),
        "password_encryption": "scram-sha-256",
        "min_wal_size": "32MB",
        "ssl": "on",
        "ssl_cert_file": str(paths.cert_file),
        "ssl_key_file": str(paths.key_file),
        "ssl_ca_file": str(paths.ca_file),
        "logging_collector": "on",
        "log_directory": str(paths.pg_log_dir),
        "log_filename": "postgresql.log",
        "log_file_mode": "0600",
        "log_line_prefix": "%m [%p] ",
        # Recent WAL stays on every node so that a failed primary restored from its region's
        # backups can take from the active service the WAL its archive never received (at most
        # archive_timeout's worth). Not more: pg_rewind (PostgreSQL 15) copies the source's whole
        # pg_wal, so every kept segment crosses regions on a rewind (measured: 256MB made a 1%
        # rewind move 20% of a full copy).
        "wal_keep_size": "64MB",
        # With a synchronous standby (synchronous_mode, multi-node plans) a commit is acknowledged
        # once the standby has flushed its WAL to disk ("on" = remote flush): what a failover
        # needs, without waiting for replay (remote_apply). Sessions may still lower it for
        # themselves (SET synchronous_commit = local).
        "synchronous_commit": "on",
    }
    if archive_command:
        local_params.update({
            "archive_mode": "on",
            "archive_command": archive_command,
            "archive_timeout": f"{spec.backup.archive_timeout_s}s",
        })
    local_params.update(spec.pg_parameters)
    return {
        "scope": spec.cluster,
        "name": name,
        "namespace": NAMESPACE,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"{host}:{rest_port}", "connect_address": f"{host}:{rest_port}"},
        "etcd3": {"hosts": f"{host}:{etcd_port}"},
        "bootstrap": {
            "dcs": {
                "ttl": 20,
                "loop_wait": 1,
                "retry_timeout": 5,
                "maximum_lag_on_failover": 16 * 1024 * 1024,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": dict(DCS_PARAMETERS),
                },
                # standby_cluster / slots: only used when the scope is first created; the agent
                # keeps the DCS itself in line with the spec afterwards (pgcrdr.agent.dcs).
                **crdr_dcs(spec),
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{host}:{pg_port}",
            "connect_address": f"{host}:{pg_port}",
            "data_dir": str(paths.data_dir),
            "bin_dir": str(pg_bin_dir),
            "pgpass": str(paths.pgpass),
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": SUPERUSER, "password": spec.superuser_password},
                "replication": {"username": REPLICATION_USER, "password": spec.replication_password,
                                "sslmode": "require"},
                "rewind": {"username": REWIND_USER, "password": spec.rewind_password,
                           "sslmode": "require"},
            },
            "parameters": local_params,
            "pg_hba": pg_hba(host),
            "create_replica_methods": ["basebackup"],
            "basebackup": [{"checkpoint": "fast"}],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def render_patroni_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


# Patroni runs through a small launcher that changes three things and nothing else (a launcher,
# not a fork; with another Patroni that lacks a hook it runs Patroni as it is and says so on stderr):
# - Patroni 4.1's etcd3 client sets its own socket options (TCP keepalive) in place of urllib3's
#   defaults, which dropped TCP_NODELAY; urllib3 2 writes a request's headers and its body in two
#   sends, so with Nagle on, every etcd write waits for the server's delayed ACK of the headers:
#   44 ms per write instead of 1 ms (measured here, idle). A leader's HA cycle makes three writes
#   and PATCH /config one more, so Patroni took ~135 ms after the PATCH to *decide* a demote or a
#   promote, before doing it (decisions.md, issue 14). The launcher adds TCP_NODELAY to those sockets.
# - Patroni's ``Postgresql.wait_for_startup`` asks pg_isready once a second while PostgreSQL starts:
#   a new standby that accepts connections 0.1 s after its postmaster opened its port was seen a
#   second later (0.95 s of a recovery copy's fixed cost, decisions.md). The launcher runs the same
#   loop with the pause doubling from 50 ms up to Patroni's 1 s: a slow start (crash recovery) is
#   asked at the same rate as before after its first 1.5 s.
# - A demote to a standby cluster first asks ``postgres -C archive_mode`` and ``-C archive_command``
#   (two processes, 15-25 ms each under load, while the writer still runs: ~49 ms from "Demoting
#   self" to the fast shutdown, decisions.md). Their answers depend only on the configuration
#   files: the launcher remembers them per digest of those files' contents (any change asks again,
#   except the synchronous_standby_names lines Patroni rewrites right before it demotes a writer
#   in synchronous mode) and reads them ahead every 2 s while PostgreSQL runs. Other settings are
#   asked every time.
# All only in the Patroni process itself (``__main__``): Patroni starts the postmaster through
# multiprocessing "spawn", which imports this file again as ``__mp_main__`` only to run pg_ctl.
PATRONI_LAUNCHER = """\
# generated by pgcrdr: runs Patroni with TCP_NODELAY on its etcd3 sockets, PostgreSQL's startup
# polled promptly and its archive settings read once per configuration (see pgcrdr/agent/patroni.py)
import hashlib
import os
import socket
import sys
import threading
import time


def _tcp_nodelay():
    try:
        from patroni.dcs.etcd3 import Etcd3

        _keepalive_only = Etcd3.set_socket_options

        def _set_socket_options(self, sock, socket_options):
            _keepalive_only(self, sock, socket_options)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        Etcd3.set_socket_options = _set_socket_options
    except (ImportError, AttributeError) as exc:
        print(f"pgcrdr launcher: etcd3 sockets left as Patroni sets them: {exc!r}", file=sys.stderr)


def _prompt_startup():
    try:
        from patroni.postgresql import Postgresql, logger
        from patroni.postgresql.misc import PostgresqlState

        for name in ("wait_for_startup", "is_starting", "check_startup_state_changed", "time_in_state"):
            getattr(Postgresql, name)
        running = PostgresqlState.RUNNING
    except (ImportError, AttributeError) as exc:
        print(f"pgcrdr launcher: PostgreSQL's startup polled as Patroni does: {exc!r}", file=sys.stderr)
        return

    def wait_for_startup(self, timeout=0):
        if not self.is_starting():
            logger.warning("wait_for_startup() called when not in starting state")
        pause = 0.05
        while not self.check_startup_state_changed():
            if self.cancellable.is_cancelled or timeout and self.time_in_state() > timeout:
                return None
            time.sleep(pause)
            pause = min(1.0, pause * 2)
        return self.state == running

    Postgresql.wait_for_startup = wait_for_startup


_MEMO_GUCS = ("archive_mode", "archive_command")
_instances = []


def _remember_archive_settings():
    try:
        from patroni.postgresql import Postgresql

        _guc_uncached = Postgresql.get_guc_value
        _init_uncounted = Postgresql.__init__
    except (ImportError, AttributeError) as exc:
        print(f"pgcrdr launcher: archive settings read by Patroni each time: {exc!r}", file=sys.stderr)
        return
    memo = {}
    lock = threading.Lock()

    def _config_stamp(pg):
        # what `postgres -C` reads: every *.conf of the config and data directories, as they
        # are, except the synchronous_standby_names lines that Patroni rewrites (and reloads)
        # right before it demotes a writer in synchronous mode
        digest = hashlib.sha256()
        for d in sorted({os.path.dirname(pg.config.postgresql_conf), pg.data_dir}):
            for name in sorted(os.listdir(d)):
                if name.endswith(".conf"):
                    with open(os.path.join(d, name), "rb") as f:
                        kept = [ln for ln in f.read().splitlines()
                                if not ln.lstrip().startswith(b"synchronous_standby_names")]
                    digest.update(os.path.join(d, name).encode() + b"\\0" + b"\\n".join(kept) + b"\\0")
        return digest.hexdigest()

    def get_guc_value(self, name):
        if name not in _MEMO_GUCS:
            return _guc_uncached(self, name)
        try:
            stamp = _config_stamp(self)
        except OSError:
            return _guc_uncached(self, name)
        with lock:
            hit = memo.get((id(self), name))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = _guc_uncached(self, name)
        if value is not None:
            with lock:
                memo[(id(self), name)] = (stamp, value)
        return value

    def __init__(self, *args, **kwargs):
        _init_uncounted(self, *args, **kwargs)
        _instances.append(self)

    Postgresql.get_guc_value = get_guc_value
    Postgresql.__init__ = __init__
    threading.Thread(target=_read_ahead, name="pgcrdr-read-ahead", daemon=True).start()


def _read_ahead():
    while True:
        time.sleep(2.0)
        for pg in list(_instances):
            try:
                if os.path.exists(os.path.join(pg.data_dir, "postmaster.pid")):
                    for name in _MEMO_GUCS:
                        pg.get_guc_value(name)
            except Exception:  # noqa: BLE001 - a read ahead only; the demote reads for itself
                pass


if __name__ == "__main__":
    _tcp_nodelay()
    _prompt_startup()
    _remember_archive_settings()
    from patroni.__main__ import main

    sys.exit(main())
"""
PATRONI_LAUNCHER_NAME = "run-patroni.py"


def patroni_argv(node_venv: Path, yml: Path) -> list[str]:
    """Patroni through ``PATRONI_LAUNCHER``, which must be written next to ``yml``. The yml path
    stays on the command line: it is how a node's Patroni process is recognised."""
    return [str(node_venv / "bin" / "python"), str(yml.parent / PATRONI_LAUNCHER_NAME), str(yml)]


def get_patroni(rest_port: int, host: str = "127.0.0.1", timeout: float = 1.0,
                prompt: bool = False) -> dict[str, Any] | None:
    """GET /patroni of a node: its role, state and WAL positions; None if unreachable.

    ``prompt``: the same status through GET /health, which Patroni answers at once. GET /patroni
    retries its query once a second while PostgreSQL does not accept connections, so during a
    start it does not answer within ``timeout`` and the start is seen a tick late (a recovery
    copy's ~0.5 s, decisions.md). Without that retry a running node's passing query failure reads
    as state "unknown": only for a cluster being created, whose readiness it delays by a tick."""
    try:
        r = LOCAL.get(f"http://{host}:{rest_port}/{'health' if prompt else 'patroni'}", timeout=timeout)
        data = r.json()
        return data if isinstance(data, dict) else None
    except (httpx.HTTPError, ValueError):
        return None
