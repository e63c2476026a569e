"""Shared test helpers: a running pgcrdr platform, the real avn, bounded waits, a write checker."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from pgcrdr.config import Settings
from pgcrdr.drill.load import AckWriter, WriteLog  # noqa: F401 - WriteLog: the tests' too

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns a truthy value; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - remembered and reported on timeout
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})"
                                                                                  if last_exc else ""))


@dataclass
class RunningPlatform:
    home: Path
    port_offset: int
    api_url: str
    token: str
    admin_email: str
    admin_password: str
    env: dict[str, str]
    config_dir: Path

    def pgcrdr(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "pgcrdr"), *args], env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def avn(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 300, token: str | None = None) -> subprocess.CompletedProcess:
        """The real avn CLI pointed at this platform."""
        cmd = [str(VENV_BIN / "avn"), "--url", self.api_url]
        if token is not False:  # type: ignore[comparison-overlap]
            cmd += [f"--auth-token={token or self.token}"]
        full_env = {**self.env, "AIVEN_CONFIG_DIR": str(self.config_dir), **(env or {})}
        proc = subprocess.run(cmd + list(args), env=full_env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"avn {' '.join(args)} failed rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"aivenv1 {self.token}"}, timeout=30)

    def service(self, project: str, name: str) -> dict:
        with self.api() as c:
            r = c.get(f"/v1/project/{project}/service/{name}")
            r.raise_for_status()
            return r.json()["service"]

    def settings(self) -> Settings:
        return Settings.from_env(home=self.home, port_offset=self.port_offset, port_base=TEST_PORT_BASE)

    def agent_token(self) -> str:
        return (self.home / "control" / "agent-token").read_text().strip()

    def node_dsns(self, project: str, services: list[tuple[str, str]]) -> dict[str, str]:
        """Every PostgreSQL node of these (service, cloud) pairs, addressed directly (no proxy),
        as the services' admin user. A region that is down contributes no node."""
        from pgcrdr.agentapi.client import AgentClient
        from pgcrdr.controlplane.services import cluster_id

        settings = self.settings()
        pw = self.service(project, services[0][0])["service_uri_params"]["password"]
        out = {}
        for name, cloud in services:
            region = settings.region(cloud)
            assert region is not None
            client = AgentClient(settings.agent_url(region), self.agent_token(), timeout=2,
                                 verify=settings.agent_verify)
            try:
                st = client.get_cluster(cluster_id(project, name))
            except Exception:  # noqa: BLE001 - a region that is down has no reachable nodes
                st = None
            finally:
                client.close()
            for n in st.nodes if st else []:
                out[n.name] = (f"host={n.host} port={n.pg_port} user=avnadmin password={pw} dbname=defaultdb "
                               "sslmode=require")
        return out


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Test platforms live below the kernel's ephemeral port range (32768+), where outgoing
# connections could take a port a server is about to bind.
TEST_PORT_BASE = 11000


def free_port_offset(start: int) -> int:
    """The first offset from ``start`` (in steps of one instance's 3000-port span) whose ports
    are all free, so test platforms never collide with each other or with anything else."""
    for offset in range(start, 21000, 3000):
        base = TEST_PORT_BASE + offset
        ports = [base, *range(base + 100, base + 140)]
        for region_base in (base + 1000, base + 2000):
            ports += [region_base, region_base + 1, region_base + 2, *range(region_base + 10, region_base + 60)]
        if all(port_free(p) for p in ports):
            return offset
    raise RuntimeError(f"no free port range for a test platform from offset {start}")


def start_platform(port_offset: int) -> RunningPlatform:
    port_offset = free_port_offset(port_offset)
    home = Path(tempfile.mkdtemp(prefix="pgcrdr-test-", dir="/tmp"))
    os.chmod(home, 0o755)
    env = {**os.environ, "PGCRDR_HOME": str(home), "PGCRDR_PORT_OFFSET": str(port_offset),
           "PGCRDR_PORT_BASE": str(TEST_PORT_BASE)}
    env.pop("AIVEN_AUTH_TOKEN", None)
    proc = subprocess.run([str(VENV_BIN / "pgcrdr"), "up", "--detach", "--timeout", "120"], env=env,
                          capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        log = home / "run" / "pgcrdr.log"
        tail = log.read_text()[-4000:] if log.exists() else ""
        stop_platform_home(home, env)
        raise RuntimeError(f"pgcrdr up failed: {proc.stdout}\n{proc.stderr}\n{tail}")
    status = json.loads(subprocess.run([str(VENV_BIN / "pgcrdr"), "status", "--json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    config_dir = home / "avn-config"
    config_dir.mkdir()
    return RunningPlatform(
        home=home, port_offset=port_offset, api_url=status["api_url"], token=status["token"],
        admin_email="admin@pgcrdr.local",
        admin_password=(home / "control" / "admin-password").read_text().strip(),
        env=env, config_dir=config_dir,
    )


def stop_platform_home(home: Path, env: dict[str, str]) -> None:
    subprocess.run([str(VENV_BIN / "pgcrdr"), "down"], env=env, capture_output=True, text=True, timeout=300)
    shutil.rmtree(home, ignore_errors=True)


def stop_platform(p: RunningPlatform) -> None:
    stop_platform_home(p.home, p.env)


# --- the acknowledged-writes checker (../shared/docs/reliability.md) -------------------------

class Writer(AckWriter):
    """The acknowledged-writes checker (pgcrdr.drill.load.AckWriter) on the tests' table."""

    def __init__(self, uri: str, table: str = "acked_writes", interval: float = 0.02, **connect_kw: Any):
        super().__init__(uri, table, interval, **connect_kw)


class WriterProbe(threading.Thread):
    """Samples every node every ~100 ms: is it writable? Records any moment with two writers."""

    def __init__(self, dsns: Callable[[], dict[str, str]], interval: float = 0.1,
                 connect: Callable[[str], psycopg.Connection] | None = None):
        super().__init__(daemon=True)
        self.dsns, self.interval = dsns, interval
        # how to reach a node (a lab reaches each node from inside its own host)
        self.connect = connect or (lambda dsn: psycopg.connect(dsn, connect_timeout=1, autocommit=True))
        self.samples = 0
        self.two_writers: list[tuple[float, list[str]]] = []
        self.writers_seen: set[str] = set()
        self._halt = threading.Event()
        self._conns: dict[str, psycopg.Connection] = {}

    def stop(self) -> WriterProbe:
        self._halt.set()
        self.join(timeout=30)
        for c in self._conns.values():
            try:
                c.close()
            except psycopg.Error:
                pass
        return self

    def _writable(self, name: str, dsn: str) -> bool:
        try:
            conn = self._conns.get(name)
            if conn is None or conn.closed:
                conn = self.connect(dsn)
                self._conns[name] = conn
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False
        except psycopg.Error:
            self._conns.pop(name, None)
            return False

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                targets = self.dsns()
            except Exception:  # noqa: BLE001 - the topology may be moving; sample next time
                targets = {}
            writers = [n for n, dsn in targets.items() if self._writable(n, dsn)]
            self.samples += 1
            self.writers_seen.update(writers)
            if len(writers) > 1:
                self.two_writers.append((time.monotonic(), writers))
            time.sleep(self.interval)


def dr_status(p: RunningPlatform, project: str, name: str) -> dict:
    """GET .../service/NAME/disaster-recovery: role, peer, running operation, history."""
    with p.api() as c:
        r = c.get(f"/v1/project/{project}/service/{name}/disaster-recovery")
        r.raise_for_status()
        return r.json()


def wait_operation(p: RunningPlatform, project: str, name: str, kind: str, timeout: float = 180) -> dict:
    """Wait until the pair's latest operation of ``kind`` has finished, and return it."""
    def finished() -> dict | None:
        d = dr_status(p, project, name)
        if d["operation"] is not None:
            return None
        done = [o for o in d["history"] if o["kind"] == kind]
        return done[-1] if done else None

    return wait_for(f"the {kind} operation to finish", finished, timeout=timeout)


def wait_done(p: RunningPlatform, project: str, name: str, kind: str, timeout: float = 240) -> dict:
    """``wait_operation``, and the operation must have succeeded."""
    op = wait_operation(p, project, name, kind, timeout=timeout)
    assert op["state"] == "done", json.dumps(op, indent=1)
    return op


def first_after(times: list[float], t: float) -> float | None:
    """The first of ``times`` after ``t`` (e.g. the first acknowledged write after a request)."""
    return next((x for x in sorted(times) if x > t), None)


def role_of(p: RunningPlatform, project: str, name: str) -> dict:
    svc = p.service(project, name)
    return {"state": svc["state"], "disaster_recovery_role": svc["disaster_recovery_role"]}


def wait_backup_on_current_timeline(p: RunningPlatform, project: str, service: str, cloud: str,
                                    timeout: float, interval: float = 1.0) -> None:
    """Until ``service``'s region (``cloud``) holds a finished backup of its writer's current
    timeline, which a failback restore from that region needs; asked of the region's agent."""
    from pgcrdr.agentapi.client import AgentClient
    from pgcrdr.controlplane.services import cluster_id

    s = p.settings()
    region = s.region(cloud)
    assert region is not None
    agent = AgentClient(s.agent_url(region), p.agent_token(), timeout=30, verify=s.agent_verify)
    try:
        def backed_up() -> bool:
            st = agent.get_cluster(cluster_id(project, service))
            if st is None or st.lsn is None or st.backup is None or st.backup.running is not None:
                return False
            return any(b.timeline == st.lsn.timeline for b in st.backup.backups)

        wait_for("a backup of the primary on its timeline", backed_up, timeout=timeout, interval=interval)
    finally:
        agent.close()
