"""The global etcd over TLS (``store_tls``, the default for members pgcrdr runs): a real etcd
member started with the flags ``pgcrdr store-member`` gives it, the certificates ``pgcrdr
secrets`` makes. A client with the deployment's certificate reads and writes; a client without a
certificate, one whose certificate another CA signed, and plain HTTP are refused; a missing file
is named."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pgcrdr.controlplane.store import StoreUnavailable, open_store
from pgcrdr.controlplane.store.member import MemberSecretsError, member_argv
from pgcrdr.controlplane.store.settings import StoreSettings
from pgcrdr.etcdv3 import EtcdGateway, EtcdUnreachable, StoreTLS, StoreTLSError
from pgcrdr.security.deployment import ensure_deployment_secrets, member_bundle
from pgcrdr.topology import parse_topology
from tests.etcd_cluster import free_ports


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def topology(client: int, peer: int) -> str:
    return f"""
[control]
api_port = 25000
[[control.hosts]]
name = "c1"
address = "127.0.0.1"
[[control.store_members]]
name = "m1"
address = "127.0.0.1"
client_port = {client}
peer_port = {peer}
[[regions]]
cloud_name = "tls-a"
host = "127.0.0.2"
[[regions]]
cloud_name = "tls-b"
host = "127.0.0.3"
"""


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    base = tmp_path_factory.mktemp("store-tls")
    client, peer = free_ports(2)
    topo = parse_topology(topology(client, peer))
    secrets = base / "secrets"
    written = ensure_deployment_secrets(topo, secrets)
    assert {"store-client.crt", "store-client.key", "store-m1/member.crt", "store-m1/member.key",
            "tls-a/store-client.key"} <= set(written)
    assert ensure_deployment_secrets(topo, secrets) == []  # idempotent
    assert (secrets / "store-client.key").stat().st_mode & 0o777 == 0o600
    argv = member_argv(topo, topo.store_members[0], base / "data", member_bundle(secrets, "m1"))
    log = open(base / "etcd.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    tls = StoreTLS(secrets / "ca.crt", secrets / "store-client.crt", secrets / "store-client.key")
    url = topo.store_members[0].client_url
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/health", verify=tls.context(), timeout=1).json().get("health") == "true":
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (base / "etcd.log").read_text()[-2000:]
        time.sleep(0.2)
    yield topo, secrets, tls, url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    log.close()


def test_a_client_with_the_deployments_certificate_reads_and_writes(member):
    topo, secrets, tls, url = member
    assert url.startswith("https://127.0.0.1:")
    gw = EtcdGateway([url], tls=tls)
    try:
        gw.put("/tls-test/k", "v")
        assert gw.range("/tls-test/k")[0][0].value == "v"
    finally:
        gw.close()
    # a region's bundle works too (the agent's writer lease)
    region = secrets / "tls-a"
    gw = EtcdGateway([url], tls=StoreTLS(region / "ca.crt", region / "store-client.crt", region / "store-client.key"))
    try:
        assert gw.range("/tls-test/k")[0][0].value == "v"
    finally:
        gw.close()


def test_the_store_opens_over_tls_from_a_parts_settings(member, tmp_path, monkeypatch):
    from pgcrdr.config import Settings

    topo, secrets, _, url = member
    for name in ("PGCRDR_STORE", "PGCRDR_STORE_ENDPOINTS", "PGCRDR_STORE_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_topology(topo, home=tmp_path / "home", secrets=secrets)
    chosen = StoreSettings.for_settings(settings)
    assert chosen.endpoints == (url,) and chosen.tls is not None
    store = open_store(settings)
    try:
        assert store.list_projects() is not None
    finally:
        store.close()


def test_clients_without_the_deployments_certificate_are_refused(member, tmp_path):
    topo, secrets, tls, url = member
    ca_only = httpx.Client(verify=str(secrets / "ca.crt"), timeout=3)
    try:
        with pytest.raises(httpx.HTTPError, match="certificate"):  # the member wants a client certificate
            ca_only.post(url + "/v3/kv/range", json={"key": "L3Rscy10ZXN0L2s="})
    finally:
        ca_only.close()
    other = tmp_path / "other"
    ensure_deployment_secrets(topo, other)  # another deployment: another CA
    gw = EtcdGateway([url], tls=StoreTLS(secrets / "ca.crt", other / "store-client.crt", other / "store-client.key"))
    try:
        with pytest.raises(EtcdUnreachable, match="(?i)certificate|ssl"):
            gw.range("/tls-test/k")
    finally:
        gw.close()
    with pytest.raises(httpx.RemoteProtocolError):  # the member is up (above): plain HTTP gets no answer
        httpx.get(url.replace("https://", "http://") + "/health", timeout=3)


def test_missing_tls_files_are_named(member, tmp_path):
    topo, secrets, _, url = member
    with pytest.raises(StoreTLSError, match="store client certificate .*store-client.crt is missing"):
        EtcdGateway([url], tls=StoreTLS(secrets / "ca.crt", tmp_path / "store-client.crt", tmp_path / "k"))
    with pytest.raises(StoreUnavailable, match="is missing"):
        from pgcrdr.controlplane.store import EtcdStore

        EtcdStore([url], tls=StoreTLS(secrets / "ca.crt", tmp_path / "store-client.crt", tmp_path / "k"))
    with pytest.raises(MemberSecretsError, match="has no ca.crt"):
        member_argv(topo, topo.store_members[0], tmp_path / "data", Path(tmp_path / "nothing"))
