"""The deployment's secrets (`pgcrdr secrets`): modes, idempotence, certificates that carry each
host's address, clear refusals; and the settings of each part of a topology."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgcrdr.cli.main import main
from pgcrdr.config import Settings
from pgcrdr.security.deployment import SecretsError, ensure_deployment_secrets, load_agent_secrets, \
    load_control_secrets
from pgcrdr.topology import parse_topology

TOPOLOGY = """
[control]
api_port = 25000
[[control.hosts]]
name = "control-1"
address = "10.10.0.10"
[[regions]]
cloud_name = "dc-europe"
host = "10.10.1.10"
[[regions]]
cloud_name = "dc-america"
host = "10.10.2.10"
"""


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_secrets_are_private_idempotent_and_carry_each_hosts_address(tmp_path: Path):
    topo = parse_topology(TOPOLOGY)
    out = tmp_path / "secrets"
    written = ensure_deployment_secrets(topo, out)
    assert {"ca.key", "ca.crt", "agent-token", "dc-europe/agent.key", "dc-america/agent.crt"} <= set(written)
    for secret in ("ca.key", "agent-token", "dc-europe/agent.key", "dc-europe/agent-token"):
        assert _mode(out / secret) == 0o600, secret
    assert _mode(out) == 0o700 and not list(out.rglob(".*.tmp"))
    assert ensure_deployment_secrets(topo, out) == []  # nothing rewritten
    eu = load_agent_secrets(out / "dc-europe", "10.10.1.10")
    ctl = load_control_secrets(out)
    assert eu.token == ctl.token and eu.ca_file.read_text() == ctl.ca_file.read_text()
    with pytest.raises(SecretsError, match="not this host's 10.10.2.10"):
        load_agent_secrets(out / "dc-europe", "10.10.2.10")
    # a region moved to another address gets a new certificate; the CA and token stay
    moved = parse_topology(TOPOLOGY.replace("10.10.1.10", "10.10.1.11"))
    assert set(ensure_deployment_secrets(moved, out)) == {"dc-europe/agent.key", "dc-europe/agent.crt"}
    assert load_agent_secrets(out / "dc-europe", "10.10.1.11").token == ctl.token


def test_missing_or_half_secrets_are_refused_clearly(tmp_path: Path):
    with pytest.raises(SecretsError, match="pgcrdr secrets --topology"):
        load_agent_secrets(tmp_path, "10.10.1.10")
    with pytest.raises(SecretsError, match="cannot read the deployment CA"):
        load_control_secrets(tmp_path)
    out = tmp_path / "s"
    ensure_deployment_secrets(parse_topology(TOPOLOGY), out)
    (out / "ca.key").unlink()
    with pytest.raises(SecretsError, match="only one of ca.crt and ca.key"):
        ensure_deployment_secrets(parse_topology(TOPOLOGY), out)


def test_each_part_of_a_topology_gets_its_address_and_tls(tmp_path: Path):
    topo = parse_topology(TOPOLOGY)
    agent = Settings.from_topology(topo, home=tmp_path, region="dc-america")
    assert agent.host == "10.10.2.10" and agent.secrets_dir == tmp_path.resolve() / "secrets"
    ctl = Settings.from_topology(topo, home=tmp_path, secrets=tmp_path / "s")
    assert ctl.host == "10.10.0.10" and ctl.api_url == "http://10.10.0.10:25000"
    assert ctl.agent_url(ctl.regions[0]) == "https://10.10.1.10:26000"
    assert ctl.agent_verify == str(tmp_path.resolve() / "s" / "ca.crt")
    assert ctl.agent_token_path == tmp_path.resolve() / "s" / "agent-token"
    embedded = Settings.from_env(home=tmp_path)
    assert embedded.agent_url(embedded.regions[0]).startswith("http://127.0.0.1:") and embedded.agent_verify is True


def test_the_secrets_command(tmp_path: Path):
    topo = tmp_path / "t.toml"
    topo.write_text(TOPOLOGY)
    r = CliRunner().invoke(main, ["secrets", "--topology", str(topo), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "copy" in r.output and "dc-europe" in r.output and "agent-token" in r.output
    token = (tmp_path / "out" / "agent-token").read_text().strip()
    assert token not in r.output  # the token itself is never printed
    again = CliRunner().invoke(main, ["secrets", "--topology", str(topo), "--out", str(tmp_path / "out")])
    assert again.exit_code == 0 and "nothing to write" in again.output
    bad = CliRunner().invoke(main, ["secrets", "--topology", str(tmp_path / "nope.toml"), "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "cannot read the topology file" in bad.output and "Traceback" not in bad.output
    r = CliRunner().invoke(main, ["agent", "--region", "dc-europe", "--topology", str(topo), "--home",
                                  str(tmp_path / "h")])
    assert r.exit_code != 0 and "pgcrdr secrets --topology" in r.output


HEALTH = {"region": "dc-europe", "etcd_healthy": True, "clusters": 0, "message": None}


def test_the_control_plane_verifies_the_agent_against_the_deployments_ca(tmp_path: Path):
    """An agent serving its region's certificate is trusted; a server on the same address with a
    certificate of another CA (or none) is refused before any request is sent."""
    from pgcrdr.agentapi.client import AgentClient, AgentError
    from tests.unit.local_server import local_server

    local = parse_topology(TOPOLOGY.replace("10.10.1.10", "127.0.0.1"))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ensure_deployment_secrets(local, ours)
    ensure_deployment_secrets(local, theirs)
    ca = str(ours / "ca.crt")
    bundle = ours / "dc-europe"
    with local_server((200, HEALTH), tls=(str(bundle / "agent.crt"), str(bundle / "agent.key"))) as srv:
        client = AgentClient(srv.url, "t", timeout=5, verify=ca)
        assert client.health().etcd_healthy
        client.close()
    other = theirs / "dc-europe"
    with local_server((200, HEALTH), tls=(str(other / "agent.crt"), str(other / "agent.key"))) as srv:
        client = AgentClient(srv.url, "t", timeout=5, verify=ca)
        with pytest.raises(AgentError, match="CERTIFICATE_VERIFY_FAILED"):
            client.health()
        client.close()
        assert srv.seen == []  # refused during the handshake: nothing was sent to it
    # the right CA's certificate, reached under a name it does not carry, is refused too
    with local_server((200, HEALTH), tls=(str(bundle / "agent.crt"), str(bundle / "agent.key"))) as srv:
        host_url = srv.url.replace("127.0.0.1", "localhost")  # the certificate names 127.0.0.1 only
        client = AgentClient(host_url, "t", timeout=5, verify=ca)
        with pytest.raises(AgentError, match="CERTIFICATE_VERIFY_FAILED|match"):
            client.health()
        client.close()
