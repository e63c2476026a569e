"""pgcrdr deployed on a lab of hosts (network namespaces) for end-to-end tests: the control plane
on the control host, each region's agent on its own host, the real avn run from the control host.

The test thread itself runs inside the control host's network for the whole module
(``pgcrdr.lab.in_host``): its HTTP and PostgreSQL clients, the writer threads and the avn
processes it starts all reach the deployment as a client next to the control plane would, by
the lab's addresses only. A client inside a region is a thread started inside that host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgcrdr.config import Settings
from pgcrdr.lab import LabDeployment, in_host, lab_down, lab_up, plan_lab
from tests.helpers import RunningPlatform


@dataclass
class LabPlatform(RunningPlatform):
    deployment: LabDeployment | None = None

    @property
    def lab(self):  # noqa: ANN201
        assert self.deployment is not None
        return self.deployment.lab

    def settings(self) -> Settings:
        assert self.deployment is not None
        return self.deployment.settings("ctl")

    def agent_token(self) -> str:
        assert self.deployment is not None
        return (self.deployment.secrets_dir / "agent-token").read_text().strip()

    def connect_node(self, dsn: str) -> psycopg.Connection:
        """A node's connection opened from inside its own host: a node accepts clients from its
        region's host only (everything else comes through the region's proxy)."""
        host = next(h.name for h in self.lab.hosts if f"host={h.address} " in dsn)
        with in_host(self.lab, host):
            return psycopg.connect(dsn, connect_timeout=1, autocommit=True)


@contextmanager
def lab_platform(cloud_names: list[str], lab_id: str, subnet: int, replicas: tuple[str, ...] = ("ctl",),
                 store_hosts: tuple[str, ...] = (), replica_env: dict[str, dict[str, str]] | None = None,
                 extra_env: dict[str, str] | None = None) -> Iterator[LabPlatform]:
    """A lab of three hosts with pgcrdr deployed on it (default: one control plane on the control
    host; or ``replicas`` on those hosts over a global etcd on ``store_hosts``, a host ``w`` being
    the witness; ``extra_env``: settings of every part); the calling thread runs inside the
    control host until the end, as a client.
    Everything is stopped by PID and every namespace removed, even on failure."""
    lab = lab_up(plan_lab(lab_id, regions=len(cloud_names), subnet=subnet, witness="w" in replicas + store_hosts))
    root = Path(tempfile.mkdtemp(prefix=f"pgcrdr-lab-{lab_id}-", dir="/tmp"))
    deployment = LabDeployment(lab, root, cloud_names, replicas=replicas, store_hosts=store_hosts,
                               replica_env=replica_env or {}, extra_env=extra_env or {})
    try:
        deployment.start()
        ctl = deployment.replica_settings(replicas[0])
        config_dir = root / "avn-config"
        config_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PGCRDR_", "AIVEN_"))}
        with in_host(lab, "ctl"):
            yield LabPlatform(
                home=ctl.home, port_offset=0, api_url=ctl.api_url, token=deployment.api_token(),
                admin_email="admin@pgcrdr.local",
                admin_password=(ctl.control_dir / "admin-password").read_text().strip(),
                env={**env, "PGCRDR_HOME": str(ctl.home)}, config_dir=config_dir,
                deployment=deployment)
    finally:
        try:
            deployment.stop()
        finally:
            lab_down(lab.lab_id)
            shutil.rmtree(root, ignore_errors=True)


ID_RE = re.compile(r'id = "([0-9a-f]{32})"')


def ids_in_data_dir(data_dir: Path, pg_bin: Path, os_user: str, dbname: str = "defaultdb",
                    table: str = "acked_writes") -> set[str]:
    """The ids of ``table`` in a kept data directory, read from a copy of it by PostgreSQL in
    single-user mode (no network, no server left behind; the kept directory is not touched)."""
    scratch = Path(tempfile.mkdtemp(prefix="pgcrdr-kept-", dir="/tmp"))
    try:
        copy = scratch / "data"
        subprocess.run(["cp", "-a", str(data_dir), str(copy)], check=True, timeout=300)
        for leftover in ("postmaster.pid", "standby.signal", "recovery.signal"):
            (copy / leftover).unlink(missing_ok=True)
        subprocess.run(["chown", "-R", os_user, str(scratch)], check=True)
        scratch.chmod(0o700)
        out = subprocess.run(
            ["runuser", "-u", os_user, "--", str(pg_bin / "postgres"), "--single", "-D", str(copy),
             "-c", "logging_collector=off", "-c", "archive_mode=off", "-c", "log_min_messages=fatal", dbname],
            input=f"SELECT id FROM {table};\n", capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"reading {data_dir} failed: {out.stderr[-2000:]}")
        return set(ID_RE.findall(out.stdout))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
