"""Starting and stopping the embedded default: the control plane and one agent per region.

``pgcrdr up`` runs :func:`run_foreground`; every process it starts is recorded in a PID file
under ``$PGCRDR_HOME/run`` so ``pgcrdr down`` (or a test's cleanup) can stop it by PID, even when
the process that started it is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.config import RegionConfig, Settings
from pgcrdr.controlplane.errors import Refused
from pgcrdr.controlplane.leader import LEADER_KEY, election_for
from pgcrdr.controlplane.pauses import CoordinatedEndpoints, PauseBoard, PauseFollower
from pgcrdr.etcdv3 import EtcdGateway
from pgcrdr.controlplane.reconciler import Reconciler
from pgcrdr.controlplane.services import ServiceManager, now_rfc3339
from pgcrdr.controlplane.store import Tx, hash_password, open_store
from pgcrdr.security.deployment import load_control_secrets
from pgcrdr.security.files import write_secret
from pgcrdr.security.tokens import new_token

log = logging.getLogger("pgcrdr")

DEFAULT_PROJECT = os.environ.get("PGCRDR_DEFAULT_PROJECT", "pgcrdr")
DEFAULT_ADMIN_EMAIL = os.environ.get("PGCRDR_ADMIN_EMAIL", "admin@pgcrdr.local")
STORE_MEMBER_PID = "store-member"  # a member of the global etcd run by this home (pgcrdr store-member)


@dataclass(frozen=True)
class Credentials:
    api_url: str
    console_url: str
    token: str
    email: str
    password: str | None  # only known on the very first start


def token_file(settings: Settings) -> Path:
    return settings.control_dir / "api-token"


def agent_token_file(settings: Settings) -> Path:
    return settings.agent_token_path


def initialize(settings: Settings) -> Credentials:
    """Create state on first start (idempotent): store, secrets, admin login, default project."""
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o755)  # node processes (unprivileged) must traverse it
    settings.control_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.control_dir, 0o700)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    try:
        if settings.secrets_dir is not None:
            load_control_secrets(settings.secrets_dir)  # made by `pgcrdr secrets`: refused clearly if missing
        elif not agent_token_file(settings).exists():
            write_secret(agent_token_file(settings), new_token(32))
        password = None
        if store.get_meta("admin_email") is None:
            candidate = os.environ.get("PGCRDR_ADMIN_PASSWORD") or new_token(12)
            hashed = hash_password(candidate)

            def create_admin(tx: Tx) -> bool:
                # one transaction: of replicas starting at once on an empty store, one sets the login
                if tx.meta("admin_email") is not None:
                    return False
                tx.put_meta("admin_email", DEFAULT_ADMIN_EMAIL)
                tx.put_meta("admin_password_hash", hashed)
                return True

            if store.transaction(create_admin):
                password = candidate
                write_secret(settings.control_dir / "admin-password", password)
        if not token_file(settings).exists():
            token = new_token(32)
            store.add_token(token, "initial token", now_rfc3339())
            write_secret(token_file(settings), token)
        if not store.list_projects():
            try:
                ServiceManager(store, settings).create_project(DEFAULT_PROJECT)
            except Refused:
                pass
        return Credentials(
            api_url=settings.api_url,
            console_url=settings.api_url + "/",
            token=token_file(settings).read_text().strip(),
            email=store.get_meta("admin_email") or DEFAULT_ADMIN_EMAIL,
            password=password,
        )
    finally:
        store.close()


def create_token(settings: Settings, description: str) -> str:
    initialize(settings)
    store = open_store(settings)
    try:
        token = new_token(32)
        store.add_token(token, description, now_rfc3339())
        return token
    finally:
        store.close()


# --- processes ------------------------------------------------------------------------------

def pid_path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def running_agent(settings: Settings, region: RegionConfig) -> int | None:
    """PID of this home's agent of ``region`` if it is alive."""
    return read_pid(pid_path(settings, f"agent-{region.cloud_name}"))


def start_agent(settings: Settings, region: RegionConfig) -> subprocess.Popen:
    logf = open(settings.run_dir / f"agent-{region.cloud_name}.log", "ab")
    env = {**os.environ, "PGCRDR_HOME": str(settings.home), "PGCRDR_PORT_BASE": str(settings.port_base),
           "PGCRDR_PORT_OFFSET": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgcrdr.agent", "--region", region.cloud_name,
         "--token-file", str(agent_token_file(settings))],
        stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    pid_path(settings, f"agent-{region.cloud_name}").write_text(str(proc.pid))
    return proc


def wait_agent(settings: Settings, region: RegionConfig, proc: subprocess.Popen | None,
               timeout: float = 60.0) -> None:
    token = agent_token_file(settings).read_text().strip()
    client = AgentClient(settings.agent_url(region), token, timeout=2.0, verify=settings.agent_verify)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"agent of region {region.cloud_name} exited with code {proc.returncode}; "
                    f"see {settings.run_dir}/agent-{region.cloud_name}.log"
                )
            try:
                h = client.health()
                if h.etcd_healthy:
                    return
                last = h.message or "etcd not healthy yet"
            except AgentError as exc:
                last = str(exc)
            time.sleep(0.3)
    finally:
        client.close()
    raise RuntimeError(f"agent of region {region.cloud_name} not healthy after {timeout:.0f}s: {last}")


def stop_pid(pid: int, timeout: float = 60.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        log.warning("pid %d ignored SIGTERM for %.0fs: SIGKILL", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_everything(settings: Settings) -> list[str]:
    """Stop every process pgcrdr started under this home, by PID. Safe to call repeatedly."""
    from pgcrdr.agent.processes import stop_region_processes

    said = []
    from pgcrdr.endpoint.manager import stop_all_endpoints

    up = read_pid(pid_path(settings, "pgcrdr"))
    if up and up != os.getpid():
        stop_pid(up, timeout=90)
        said.append(f"stopped pgcrdr (pid {up})")
    store_member = read_pid(pid_path(settings, STORE_MEMBER_PID))
    if store_member:
        stop_pid(store_member, timeout=30)
        said.append(f"stopped the global etcd member (pid {store_member})")
    killed_endpoints = stop_all_endpoints(settings)
    if killed_endpoints:
        said.append(f"stopped Service URI endpoints: {killed_endpoints}")
    for region in settings.regions:
        pid = read_pid(pid_path(settings, f"agent-{region.cloud_name}"))
        if pid:
            stop_pid(pid, timeout=60)
            said.append(f"stopped agent {region.cloud_name} (pid {pid})")
        killed = stop_region_processes(settings, region)
        if killed:
            said.append(f"killed leftover processes of {region.cloud_name}: {killed}")
    return said


# --- the foreground platform ----------------------------------------------------------------

class _Server(uvicorn.Server):
    """uvicorn, whose SIGTERM/SIGINT ends ``serve`` and not the process: uvicorn (since 0.29)
    raises the signal again once it has stopped serving, which killed the process before
    ``Platform.shutdown`` ran (a leader then kept its key until its lease expired)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()  # the caller shuts down, then returns


class Platform:
    """Control plane (API + reconciler) in this process, agents as child processes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.creds = initialize(settings)
        self.store = open_store(settings)
        self.agents: dict[str, subprocess.Popen] = {}
        agent_token = agent_token_file(settings).read_text().strip()
        from pgcrdr.endpoint.manager import EndpointManager

        # Service URIs live in the control plane, outside every region (they survive a region loss).
        self.endpoints = EndpointManager(settings)
        # Several replicas on one etcd: only the elected leader runs the reconciler and the
        # operations, through a store whose writes are fenced by its leader key.
        self.election = election_for(settings)
        self.pause_follower: PauseFollower | None = None
        if self.election is not None:
            self.leader_store = open_store(settings, fence=self.election.fence)
            # A planned move pauses the pooled Service URI of every replica (pgcrdr.controlplane.pauses).
            gateway = self.election.gateway
            board = PauseBoard(EtcdGateway(gateway.endpoints, tls=gateway.tls), self.election.key[:-len(LEADER_KEY)],
                               fence=self.election.fence)
            self.pause_follower = PauseFollower(board, self.endpoints, settings.control_host,
                                                term=lambda: self.reconciler.runner.term,
                                                ttl_s=settings.leader_ttl_s)
            coordinated = CoordinatedEndpoints(self.endpoints, board, self.pause_follower,
                                               term=lambda: self.reconciler.runner.term)
            self.reconciler = Reconciler(self.leader_store, settings, agent_token, endpoints=self.endpoints,
                                         leading=self.election.leading, runner_endpoints=coordinated)
            self.election.on_change = self._leadership_changed
        else:
            self.leader_store = self.store
            self.reconciler = Reconciler(self.store, settings, agent_token, endpoints=self.endpoints)
        self.server: uvicorn.Server | None = None

    def _leadership_changed(self, leading: bool) -> None:
        if leading:
            self.reconciler.runner.begin_term()  # operations of the last leader: see _guard_window
            self.reconciler.wake()  # operations a dead leader left are resumed now, not at the next tick

    def leader_name(self) -> str:
        """The replica that leads, as this replica last saw it ("" while nobody does)."""
        assert self.election is not None
        leader = self.election.leader()
        return leader.name if leader else ""

    def start_agents(self) -> None:
        """Start every region's agent, or adopt it when it still runs: a control plane that was
        killed restarts without touching the regions (they never depended on it to keep running)."""
        for region in self.settings.regions:
            if running_agent(self.settings, region) is None:
                self.agents[region.cloud_name] = start_agent(self.settings, region)
            else:
                log.info("adopting the running agent of %s", region.cloud_name)
        for region in self.settings.regions:
            wait_agent(self.settings, region, self.agents.get(region.cloud_name))

    def serve(self, on_ready: Callable[[], object] | None = None) -> None:
        from pgcrdr.api.app import create_app

        app = create_app(self.settings, self.store, wake=self.reconciler.wake,
                         reconcile_now=self.reconciler.reconcile_now, endpoints_enabled=True,
                         lag=self.reconciler.lag, leader=self.leader_name if self.election else None)
        config = uvicorn.Config(
            app, host=self.settings.host, port=self.settings.api_port, log_level="warning",
            access_log=False, lifespan="off",
        )
        self.server = _Server(config)
        if self.election is not None:
            self.election.start()
        if self.pause_follower is not None:
            self.pause_follower.start()
        self.reconciler.start()
        if on_ready is not None:
            threading.Thread(target=self._announce, args=(on_ready,), daemon=True).start()
        self.server.run()

    def _announce(self, on_ready: Callable[[], object]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server is not None and self.server.started:
                on_ready()
                return
            time.sleep(0.05)

    def shutdown(self) -> None:
        if self.election is not None:
            self.election.resign()  # the next leader need not wait for the lease to expire
        self.reconciler.stop()
        if self.pause_follower is not None:
            self.pause_follower.stop()
        self.endpoints.stop_all()
        for proc in self.agents.values():
            if proc.poll() is None:
                stop_pid(proc.pid, timeout=60)
            proc.wait(timeout=5)
        for region in self.settings.regions:  # agents restarted by `pgcrdr region up` too
            pid = read_pid(pid_path(self.settings, f"agent-{region.cloud_name}"))
            if pid:
                stop_pid(pid, timeout=60)
            pid_path(self.settings, f"agent-{region.cloud_name}").unlink(missing_ok=True)
        from pgcrdr.agent.processes import stop_region_processes

        for region in self.settings.regions:
            stop_region_processes(self.settings, region)
        if self.leader_store is not self.store:
            self.leader_store.close()
        self.store.close()


def api_healthy(settings: Settings) -> bool:
    return bool(api_answer(settings)["api_up"])


def api_answer(settings: Settings) -> dict[str, str | bool | None]:
    """Whether the API answers, and (several replicas) which replica answered and which leads."""
    from pgcrdr.api.replica import LEADER_HEADER, REPLICA_HEADER

    try:
        r = httpx.get(settings.api_url + "/v1/clouds", timeout=2)
    except httpx.HTTPError:
        return {"api_up": False, "replica": None, "leader": None}
    return {"api_up": r.status_code == 200, "replica": r.headers.get(REPLICA_HEADER),
            "leader": r.headers.get(LEADER_HEADER)}
