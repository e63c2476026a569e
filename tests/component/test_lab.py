"""The lab of hosts (network namespaces joined by a bridge in a namespace of its own): built,
hosts reach each other by their lab addresses, a partition cuts exactly one host off while its
processes keep running and local clients still reach them, heal restores it, a bandwidth cap is
in place, and down removes everything, leaving the machine's own interfaces untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pgcrdr.lab import Lab, bandwidth_commands, cap_bandwidth, exec_argv, existing_namespaces, heal, lab_down, \
    lab_up, partition, plan_lab, topology_text
from pgcrdr.topology import parse_topology

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")  # CI runs as root


def _tcp(lab: Lab, frm: str, addr: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({addr!r}, {port}), timeout=1).close()"
    return subprocess.run(exec_argv(lab, frm, [sys.executable, "-c", code]), capture_output=True).returncode == 0


@pytest.fixture()
def lab():
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    lab = lab_up(plan_lab(f"t{os.getpid() % 10000}", regions=2, subnet=200 + os.getpid() % 50))
    try:
        yield lab
    finally:
        lab_down(lab.lab_id)
        assert existing_namespaces(lab.lab_id) == []
        assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout == root_links


def _serve(lab: Lab, host: str, port: int) -> subprocess.Popen:
    """A TCP server inside ``host``, on its lab address."""
    code = ("import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(({lab.host(host).address!r}, {port})); s.listen(); time.sleep(60)")
    return subprocess.Popen(exec_argv(lab, host, [sys.executable, "-c", code]))


def _eventually(what: str, check, timeout: float = 10) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_hosts_reach_each_other_and_a_partition_cuts_one_off(lab: Lab):
    servers = [_serve(lab, "r0", 18080), _serve(lab, "r1", 18080)]
    a0, a1 = lab.host("r0").address, lab.host("r1").address
    try:
        _eventually("r0 and r1 reachable from the control host and from each other",
                    lambda: _tcp(lab, "ctl", a0, 18080) and _tcp(lab, "ctl", a1, 18080) and _tcp(lab, "r0", a1, 18080))
        partition(lab, "r0")
        assert not _tcp(lab, "ctl", a0, 18080) and not _tcp(lab, "r1", a0, 18080)
        assert _tcp(lab, "ctl", a1, 18080)  # only r0 is cut off
        assert servers[0].poll() is None and _tcp(lab, "r0", a0, 18080)  # runs on, reachable from inside
        heal(lab, "r0")
        _eventually("r0 reachable again after heal", lambda: _tcp(lab, "ctl", a0, 18080))
    finally:
        for srv in servers:
            srv.kill()
            srv.wait()


def test_bandwidth_cap_and_topology_of_the_lab(lab: Lab):
    cap_bandwidth(lab, "r0", "200mbit")
    shown = subprocess.run(["ip", "netns", "exec", lab.bridge_ns, "tc", "qdisc", "show", "dev",
                            lab.host("r0").bridge_port], capture_output=True, text=True).stdout
    assert "tbf" in shown and "200Mbit" in shown
    cap_bandwidth(lab, "r0", None)
    assert len(bandwidth_commands(lab, "r1", "1gbit")) == 2
    t = parse_topology(topology_text(lab, ["lab-a", "lab-b"]), "lab.toml")
    assert [r.host for r in t.regions] == [lab.host("r0").address, lab.host("r1").address]


def test_an_agent_runs_on_its_own_host_and_answers_only_there(lab: Lab):
    """`pgcrdr agent --region R --topology F --secrets B` inside a lab host binds its API (and its
    etcd) to that host's address and serves it over TLS: the control host reaches it there with
    the deployment's CA and token; the machine's loopback does not reach it at all."""
    import signal

    from pgcrdr.agentapi.client import AgentClient, AgentError
    from pgcrdr.config import Settings
    from pgcrdr.security.deployment import ensure_deployment_secrets
    from pgcrdr.topology import load_topology

    # the node user must traverse the agent's home: not under pytest's 0700 tmp_path
    tmp_path = Path(tempfile.mkdtemp(prefix="pgcrdr-lab-agent-", dir="/tmp"))
    topo = tmp_path / "lab.toml"
    topo.write_text(topology_text(lab, ["lab-a", "lab-b"], api_port=21000 + os.getpid() % 2000))
    home = tmp_path / "r0-home"
    home.mkdir()
    for d in (tmp_path, home):
        d.chmod(0o755)
    secrets = tmp_path / "secrets"
    ensure_deployment_secrets(load_topology(topo), secrets)
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(exec_argv(lab, "r0", [sys.executable, "-m", "pgcrdr", "agent", "--region",
                                                   "lab-a", "--topology", str(topo), "--home", str(home),
                                                   "--secrets", str(secrets / "lab-a")]),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    settings = Settings.from_topology(load_topology(topo), home=home, secrets=secrets)
    region = settings.region("lab-a")
    url = settings.agent_url(region)
    token = (secrets / "agent-token").read_text().strip()
    assert url == f"https://{lab.host('r0').address}:{region.agent_port}"
    probe = ("import sys; from pgcrdr.agentapi.client import AgentClient; "
             f"c = AgentClient({url!r}, {token!r}, timeout=2, verify={settings.agent_verify!r}); h = c.health(); "
             "sys.exit(0 if h.etcd_healthy and h.region == 'lab-a' else 1)")
    try:
        try:
            _eventually("the agent in r0 to answer the control host", lambda: agent.poll() is None and subprocess.run(
                exec_argv(lab, "ctl", [sys.executable, "-c", probe]), capture_output=True).returncode == 0, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; agent log: {(tmp_path / 'agent.log').read_text()[-2000:]}") from None
        local = AgentClient(f"https://127.0.0.1:{region.agent_port}", token, timeout=1, verify=settings.agent_verify)
        with pytest.raises(AgentError):  # not on this machine's loopback: only on its host's address
            local.health()
        local.close()
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
        log.close()
    leftovers = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    tail = (tmp_path / "agent.log").read_text()[-2000:]
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert leftovers == [], f"processes of the lab agent left: {leftovers}; log: {tail}"
