"""The secrets of a deployment whose parts run on their own hosts (a topology file).

``pgcrdr secrets --topology FILE --out DIR`` makes them once, on the control host::

    DIR/ca.crt, DIR/ca.key        the deployment's CA (the key never leaves the control host)
    DIR/agent-token               the bearer token the control plane presents to every agent
    DIR/<cloud_name>/             one bundle per region, copied to that region's host:
        ca.crt, agent.crt, agent.key, agent-token, store-client.crt, store-client.key
    DIR/store-client.crt, .key    the control plane's client certificate for the global etcd
    DIR/store-<member>/           one bundle per member of the global etcd (``store_tls``), copied
        ca.crt, member.crt, member.key    to its host: it serves clients and peers with it

Each agent certificate carries its host's address (an IP SAN): the control plane verifies the
agent it reaches against the deployment's CA and that address, so a process listening on that
address without the region's key is refused. Running it again keeps the CA and the token and
issues only what is missing or no longer matches the topology (a region moved to another
address). Every file holding a key or the token is written with mode 0600 (see ``files``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from pgcrdr.etcdv3 import StoreTLS
from pgcrdr.security.files import write_secret
from pgcrdr.security.tls import CertPair, issue_server_cert, make_ca
from pgcrdr.security.tokens import new_token
from pgcrdr.topology import Topology

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
AGENT_TOKEN = "agent-token"
AGENT_CERT = "agent.crt"
AGENT_KEY = "agent.key"
STORE_CLIENT_CERT = "store-client.crt"
STORE_CLIENT_KEY = "store-client.key"
MEMBER_CERT = "member.crt"
MEMBER_KEY = "member.key"


def store_client_tls(bundle: Path) -> StoreTLS:
    """The files a part presents to the global etcd: its bundle's CA and store client pair."""
    return StoreTLS(ca_file=bundle / CA_CERT, cert_file=bundle / STORE_CLIENT_CERT, key_file=bundle / STORE_CLIENT_KEY)


def member_bundle(out: Path, name: str) -> Path:
    """Where ``pgcrdr secrets`` puts the bundle of the global etcd's member ``name``."""
    return out / f"store-{name}"


class SecretsError(RuntimeError):
    """A secrets directory is missing or incomplete; the message says which file and what to run."""


@dataclass(frozen=True)
class AgentSecrets:
    """What an agent on its own host needs: its certificate and key (served over TLS) and the token."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    token: str


@dataclass(frozen=True)
class ControlSecrets:
    """What the control plane needs to reach agents: the CA that signed them and the token."""

    ca_file: Path
    token: str


def _cert_addresses(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _issued_by(pem: bytes, ca_pem: bytes) -> bool:
    return x509.load_pem_x509_certificate(pem).issuer == x509.load_pem_x509_certificate(ca_pem).subject


def ensure_deployment_secrets(topology: Topology, out: Path) -> list[str]:
    """Create what is missing under ``out`` (idempotent). Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    written: list[str] = []
    if (out / CA_KEY).exists() != (out / CA_CERT).exists():
        raise SecretsError(f"{out} has only one of {CA_CERT} and {CA_KEY}: restore the other from your backup, "
                           "or remove both to start a new CA (every host's bundle must then be copied again)")
    if not (out / CA_KEY).exists():
        ca = make_ca("pgcrdr deployment CA")
        write_secret(out / CA_KEY, ca.key_pem)
        write_secret(out / CA_CERT, ca.cert_pem, 0o644)
        written += [CA_KEY, CA_CERT]
    ca = CertPair((out / CA_CERT).read_text(), (out / CA_KEY).read_text())
    if not (out / AGENT_TOKEN).exists():
        write_secret(out / AGENT_TOKEN, new_token(32))
        written.append(AGENT_TOKEN)
    token = (out / AGENT_TOKEN).read_text().strip()
    tls_members = [m for m in topology.store_members if m.tls]
    needs_client = bool(tls_members) or any(e.startswith("https://") for e in topology.store_endpoints)
    if needs_client:
        written += _ensure_pair(out, STORE_CLIENT_CERT, STORE_CLIENT_KEY, ca, ["pgcrdr-control"], "")
    for m in tls_members:
        bundle = member_bundle(out, m.name)
        bundle.mkdir(exist_ok=True)
        bundle.chmod(0o700)
        written += _ensure_pair(bundle, MEMBER_CERT, MEMBER_KEY, ca, [m.address], f"{bundle.name}/")
        written += _ensure_ca(bundle, ca, f"{bundle.name}/")
    for region in topology.regions:
        bundle = out / region.cloud_name
        bundle.mkdir(exist_ok=True)
        bundle.chmod(0o700)
        cert = bundle / AGENT_CERT
        current = cert.read_bytes() if cert.exists() else None
        if (current is None or not (bundle / AGENT_KEY).exists()
                or region.host not in _cert_addresses(current) or not _issued_by(current, ca.cert_pem.encode())):
            pair = issue_server_cert(ca, [region.host])
            write_secret(bundle / AGENT_KEY, pair.key_pem)
            write_secret(cert, pair.cert_pem, 0o644)
            written += [f"{region.cloud_name}/{AGENT_KEY}", f"{region.cloud_name}/{AGENT_CERT}"]
        written += _ensure_ca(bundle, ca, f"{region.cloud_name}/")
        if needs_client:
            written += _ensure_pair(bundle, STORE_CLIENT_CERT, STORE_CLIENT_KEY, ca, [f"pgcrdr-{region.cloud_name}"],
                                    f"{region.cloud_name}/")
        if not (bundle / AGENT_TOKEN).exists() or (bundle / AGENT_TOKEN).read_text().strip() != token:
            write_secret(bundle / AGENT_TOKEN, token)
            written.append(f"{region.cloud_name}/{AGENT_TOKEN}")
    return written


def _ensure_pair(directory: Path, cert_name: str, key_name: str, ca: CertPair, names: list[str],
                 shown: str) -> list[str]:
    """A certificate of ``ca`` for ``names`` (IP addresses or DNS names) and its key, unless the
    one there already is the CA's and carries them. Returns the files written."""
    cert = directory / cert_name
    current = cert.read_bytes() if cert.exists() else None
    ips = {n for n in names if _is_ip(n)}
    if (current is not None and (directory / key_name).exists() and ips <= _cert_addresses(current)
            and _issued_by(current, ca.cert_pem.encode())):
        return []
    pair = issue_server_cert(ca, names)  # no extended key usage: good for a server and a client
    write_secret(directory / key_name, pair.key_pem)
    write_secret(cert, pair.cert_pem, 0o644)
    return [f"{shown}{key_name}", f"{shown}{cert_name}"]


def _ensure_ca(directory: Path, ca: CertPair, shown: str) -> list[str]:
    if (directory / CA_CERT).exists() and (directory / CA_CERT).read_text() == ca.cert_pem:
        return []
    write_secret(directory / CA_CERT, ca.cert_pem, 0o644)
    return [f"{shown}{CA_CERT}"]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _read(path: Path, what: str, fix: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SecretsError(f"cannot read {what} {path} ({exc.strerror}); {fix}") from None
    if not text:
        raise SecretsError(f"{what} {path} is empty; {fix}")
    return text


def load_agent_secrets(directory: Path, host: str) -> AgentSecrets:
    """The bundle of one region host, checked: the certificate must carry ``host``'s address."""
    fix = ("make them on the control host with `pgcrdr secrets --topology FILE --out DIR` and copy "
           f"DIR/<region> to {directory}")
    cert = _read(directory / AGENT_CERT, "the agent certificate", fix)
    _read(directory / AGENT_KEY, "the agent key", fix)
    _read(directory / CA_CERT, "the deployment CA", fix)
    token = _read(directory / AGENT_TOKEN, "the agent token", fix)
    try:
        addresses = _cert_addresses(cert.encode())
    except ValueError:
        raise SecretsError(f"{directory / AGENT_CERT} is not a PEM certificate; {fix}") from None
    if str(ipaddress.ip_address(host)) not in addresses:
        raise SecretsError(f"{directory / AGENT_CERT} is for {', '.join(sorted(addresses)) or 'no address'}, "
                           f"not this host's {host}: run `pgcrdr secrets` again after changing the topology "
                           "and copy the region's bundle")
    return AgentSecrets(cert_file=directory / AGENT_CERT, key_file=directory / AGENT_KEY,
                        ca_file=directory / CA_CERT, token=token)


def load_control_secrets(directory: Path) -> ControlSecrets:
    fix = "make them with `pgcrdr secrets --topology FILE --out DIR` and pass --secrets DIR"
    _read(directory / CA_CERT, "the deployment CA", fix)
    return ControlSecrets(ca_file=directory / CA_CERT, token=_read(directory / AGENT_TOKEN, "the agent token", fix))
