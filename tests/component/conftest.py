"""A real region agent (real etcd, Patroni, PostgreSQL, HAProxy) in a fresh PGCRDR_HOME.

The agent runs as a subprocess exactly as the control plane starts it. Teardown always stops
the agent (SIGTERM, then SIGKILL), then every process of the region by PID
(``stop_region_processes``), then removes the home, even when a test failed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgcrdr.agentapi.models import ClusterStatus
from pgcrdr.agent.processes import stop_region_processes
from pgcrdr.config import Settings
from pgcrdr.security.tls import issue_server_cert, make_ca

REPO = Path(__file__).resolve().parents[2]
REGION = "ct-region"


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll ``check`` until truthy; on timeout fail naming what was awaited and the last value.
    An AssertionError raised by ``check`` means waiting cannot help: it fails at once."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError:
            raise
        except Exception as exc:  # remembered for the failure message
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Agent:
    settings: Settings
    home: Path
    token: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    token_file: Path
    region_name: str = REGION

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgcrdr.agent", "--region", self.region_name,
                 "--token-file", str(self.token_file)],
                cwd=REPO, env=self.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            with self.http() as c:
                return bool(c.get("/health").json().get("etcd_healthy"))

        wait_for("the agent to answer /health with etcd healthy", healthy, timeout=40)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the agent (it stops its children first); SIGKILL if it overstays."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    @property
    def region(self):  # noqa: ANN201 - RegionConfig
        region = self.settings.region(self.region_name)
        assert region is not None
        return region

    @property
    def region_dir(self) -> Path:
        return self.settings.region_dir(self.region)

    def http(self, token: str | None = None) -> httpx.Client:
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.settings.agent_url(self.region), headers=headers, timeout=120)

    def status(self, cluster: str) -> ClusterStatus:
        with self.http() as c:
            r = c.get(f"/clusters/{cluster}")
        assert r.status_code == 200, r.text
        return ClusterStatus.model_validate(r.json())

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    if os.geteuid() == 0:
        subprocess.run(["id", "pgcrdr"], check=True, capture_output=True)
    offset = None
    for candidate in range(5000, 38000, 1000 + 40):
        base = 25000 + candidate
        if all(_port_free(base + 1000 + k) for k in (0, 1, 2, *range(10, 42))):
            offset = candidate
            break
    assert offset is not None, "no free port block for the component tests"
    home = Path(tempfile.mkdtemp(prefix="pgcrdr-ct-", dir="/tmp"))
    home.chmod(0o755)  # the unprivileged node user must traverse it
    env = {**os.environ, "PGCRDR_HOME": str(home), "PGCRDR_PORT_OFFSET": str(offset),
           "PGCRDR_REGIONS": REGION}
    env.pop("PGCRDR_PORT_BASE", None)
    settings = _settings(env)
    token = secrets.token_hex(16)
    token_file = home / "control" / "agent-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token)
    token_file.chmod(0o600)
    a = Agent(settings=settings, home=home, token=token, proc=None, log_path=home / "agent.log",  # type: ignore[arg-type]
              env=env, token_file=token_file)
    try:
        a.start()
        yield a
    finally:
        if a.proc is not None:
            a.stop()
        stop_region_processes(settings, a.region, graceful=False)
        if os.environ.get("PGCRDR_KEEP_TEST_HOME"):
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def region_agents(regions: list[str], first_offset: int = 8000) -> Iterator[list[Agent]]:
    """One agent per region in one fresh home (as ``pgcrdr up`` runs them), on a port offset
    whose every region block is free. Teardown stops each agent, then every process of each
    region by PID, then removes the home, even when a test failed."""
    if os.geteuid() == 0:
        subprocess.run(["id", "pgcrdr"], check=True, capture_output=True)
    span = 1000 * (len(regions) + 1) + 40
    offset = None
    for candidate in range(first_offset, 38000, span):
        base = 25000 + candidate
        if all(_port_free(base + 1000 * (i + 1) + k) for i in range(len(regions)) for k in (0, 1, 2, *range(10, 42))):
            offset = candidate
            break
    assert offset is not None, "no free port blocks for the component tests"
    home = Path(tempfile.mkdtemp(prefix="pgcrdr-ct2-", dir="/tmp"))
    home.chmod(0o755)
    env = {**os.environ, "PGCRDR_HOME": str(home), "PGCRDR_PORT_OFFSET": str(offset),
           "PGCRDR_REGIONS": ",".join(regions)}
    env.pop("PGCRDR_PORT_BASE", None)
    settings = _settings(env)
    token = secrets.token_hex(16)
    token_file = home / "control" / "agent-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token)
    token_file.chmod(0o600)
    agents = [Agent(settings=settings, home=home, token=token, proc=None,  # type: ignore[arg-type]
                    log_path=home / f"agent-{r}.log", env=env, token_file=token_file, region_name=r)
              for r in regions]
    try:
        for a in agents:
            a.start()
        yield agents
    finally:
        for a in agents:
            if a.proc is not None:
                a.stop()
        for a in agents:
            stop_region_processes(settings, a.region, graceful=False)
        if os.environ.get("PGCRDR_KEEP_TEST_HOME"):
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _settings(env: dict[str, str]) -> Settings:
    """The settings the agent will compute from ``env``."""
    old = dict(os.environ)
    try:
        os.environ.update(env)
        return Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.fixture(scope="module")
def tls() -> dict[str, str]:
    ca = make_ca("pgcrdr component test CA")
    srv = issue_server_cert(ca, ["127.0.0.1", "localhost"])
    return {"ca_cert_pem": ca.cert_pem, "cert_pem": srv.cert_pem, "key_pem": srv.key_pem}


def make_spec(cluster: str, node_count: int, tls: dict[str, str], **kw: Any) -> dict[str, Any]:
    spec = {
        "cluster": cluster, "node_count": node_count, "superuser_password": "su-" + cluster,
        "replication_password": "repl-" + cluster, "rewind_password": "rw-" + cluster,
        "users": [{"username": "avnadmin", "password": "admin-pw", "kind": "primary"}],
        "databases": ["defaultdb"], "tls": tls, "generation": 1,
    }
    spec.update(kw)
    return spec
