"""A deployment's topology: which host runs the control plane and which host runs each region.

A TOML file (``pgcrdr up --topology FILE``, later ``pgcrdr agent --region R --topology FILE`` and
``pgcrdr controlplane --topology FILE`` on each host)::

    [control]
    api_port = 25000                      # optional
    store = ["https://10.10.0.10:2379"]   # the global etcd's client URLs; required with several hosts

    [[control.store_members]]             # or: the global etcd's members (store then follows)
    name = "etcd-1"
    address = "10.10.0.10"
    client_port = 2379                    # optional
    peer_port = 2380                      # optional
    # store_tls = true (in [control], the default): members pgcrdr runs speak TLS only, to
    # clients and to each other, and want a certificate of the deployment's CA from every client

    [[control.hosts]]
    name = "control-1"
    address = "10.10.0.10"

    [[regions]]
    cloud_name = "dc-europe-west1"
    description = "Europe, Belgium - DC 1"   # optional
    geo_region = "europe"                     # optional
    latitude = 50.45                          # optional
    longitude = 3.82                          # optional
    host = "10.10.1.10"
    port_base = 26000                         # optional: default api_port + 1000 * (index + 1)

Parsing is pure; a wrong or inconsistent file is refused with a ``TopologyError`` naming the line
(tomllib reports syntax errors with their line; for a value that is wrong, the line of its key is
looked up in the text).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
REGION_PORT_BLOCK = 1000
CONTROL_KEYS = {"api_port", "hosts", "store", "store_members", "store_tls"}
CONTROL_HOST_KEYS = {"name", "address"}
STORE_MEMBER_KEYS = {"name", "address", "client_port", "peer_port"}
STORE_CLIENT_PORT, STORE_PEER_PORT = 2379, 2380  # etcd's own defaults
REGION_KEYS = {"cloud_name", "description", "geo_region", "latitude", "longitude", "host", "port_base"}


class TopologyError(ValueError):
    """The file is wrong; the message names the file, the line when known, and what to fix."""


@dataclass(frozen=True)
class ControlHost:
    name: str
    address: str


@dataclass(frozen=True)
class StoreMember:
    """One member of the global etcd (``pgcrdr store-member`` runs it on its host)."""

    name: str
    address: str
    client_port: int
    peer_port: int
    tls: bool = True  # ``[control] store_tls``: clients and peers speak TLS, with certificates

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.address)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.address)}:{self.peer_port}"


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@dataclass(frozen=True)
class RegionHost:
    cloud_name: str
    description: str
    geo_region: str
    latitude: float
    longitude: float
    host: str
    port_base: int


@dataclass(frozen=True)
class Topology:
    control_hosts: tuple[ControlHost, ...]
    api_port: int
    regions: tuple[RegionHost, ...]
    source: str = "<topology>"
    # The global etcd's client URLs: the control plane's state (empty: SQLite, on one host only).
    store_endpoints: tuple[str, ...] = ()
    store_members: tuple[StoreMember, ...] = ()

    def region(self, cloud_name: str) -> RegionHost | None:
        return next((r for r in self.regions if r.cloud_name == cloud_name), None)

    def store_member(self, name: str) -> StoreMember | None:
        return next((m for m in self.store_members if m.name == name), None)


class _Where:
    """Finds the line of a key in the n-th ``[[table]]`` of the text (1-based lines)."""

    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source

    def _headers(self, header: str) -> list[int]:
        pat = re.compile(r"^\s*\[\[\s*" + re.escape(header) + r"\s*\]\]\s*(#.*)?$")
        return [i for i, ln in enumerate(self.lines) if pat.match(ln)]

    def line(self, header: str | None, index: int, key: str | None) -> int | None:
        if header is None:
            start, end = 0, len(self.lines)
        else:
            heads = self._headers(header)
            if index >= len(heads):
                return None
            start = heads[index]
            end = next((i for i in range(start + 1, len(self.lines)) if self.lines[i].lstrip().startswith("[")),
                       len(self.lines))
            if key is None:
                return start + 1
        if key is None:
            return None
        pat = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for i in range(start, end):
            if pat.match(self.lines[i]):
                return i + 1
        return start + 1 if header is not None else None

    def error(self, what: str, header: str | None = None, index: int = 0, key: str | None = None) -> TopologyError:
        line = self.line(header, index, key)
        at = f"{self.source}:{line}" if line else self.source
        return TopologyError(f"{at}: {what}")


def _address(value: Any, where: _Where, header: str, index: int, key: str) -> str:
    if not isinstance(value, str):
        raise where.error(f"{key} must be an IP address in quotes", header, index, key)
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise where.error(f"{key} = {value[:60]!r} is not an IP address (a host name is not accepted: the "
                          "address is written into certificates and bind addresses)", header, index, key) from None
    if ip.is_unspecified or ip.is_multicast:
        raise where.error(f"{key} = {value!r} cannot be a host's address", header, index, key)
    return str(ip)


def _port(value: Any, where: _Where, header: str | None, index: int, key: str, span: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65535 - span:
        raise where.error(f"{key} must be a whole number from 1024 to {65535 - span}", header, index, key)
    return value


def split_client_url(raw: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``http(s)://HOST:PORT`` with nothing more (a path, a user...), or None."""
    try:
        url = urlsplit(raw)
        port = url.port
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.hostname or port is None or url.path not in ("", "/") \
            or url.query or url.fragment or url.username:
        return None
    return url.scheme, url.hostname, port


def _store_urls(value: Any, where: _Where) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error('store must be a list of etcd client URLs, e.g. ["https://10.10.0.10:2379"]', None, 0,
                          "store")
    urls = []
    for raw in value:
        parts = split_client_url(raw)
        if parts is None:
            raise where.error(f"store: {raw[:80]!r} is not an etcd client URL (https://ADDRESS:PORT, or http://)",
                              None, 0, "store")
        scheme, host, port = parts
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise where.error(f"store: {raw[:80]!r} must name its host by IP address", None, 0, "store") from None
        urls.append(f"{scheme}://{_url_host(str(ip))}:{port}")
    return tuple(urls)


def _store_members(value: Any, where: _Where, tls: bool) -> tuple[StoreMember, ...]:
    header = "control.store_members"
    if not isinstance(value, list):
        raise where.error("store_members must be [[control.store_members]] tables", None, 0, "store_members")
    members: list[StoreMember] = []
    for i, m in enumerate(value):
        _unknown(m, STORE_MEMBER_KEYS, where, header, i, "[[control.store_members]]")
        name = m.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise where.error("name must be lower-case letters, digits and '-', starting with a letter", header, i,
                              "name")
        member = StoreMember(name=name, address=_address(m.get("address"), where, header, i, "address"),
                             client_port=_port(m.get("client_port", STORE_CLIENT_PORT), where, header, i,
                                               "client_port"),
                             peer_port=_port(m.get("peer_port", STORE_PEER_PORT), where, header, i, "peer_port"),
                             tls=tls)
        if member.client_port == member.peer_port:
            raise where.error("client_port and peer_port must differ", header, i, "peer_port")
        for other in members:
            if other.name == name:
                raise where.error(f"store member {name!r} is listed twice", header, i, "name")
            if other.address == member.address and {other.client_port, other.peer_port} & {member.client_port,
                                                                                          member.peer_port}:
                raise where.error(f"store member {name!r} uses a port of member {other.name!r} on {member.address}",
                                  header, i, "client_port")
        members.append(member)
    return tuple(members)


def _unknown(table: dict[str, Any], allowed: set[str], where: _Where, header: str | None, index: int,
             what: str) -> None:
    for key in table:
        if key not in allowed:
            raise where.error(f"unknown key {key!r} in {what}; known keys: {', '.join(sorted(allowed))}",
                              header, index, key)


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    where = _Where(text, source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{source}: not valid TOML: {exc}") from None
    for key in doc:
        if key not in ("control", "regions"):
            raise where.error(f"unknown table {key!r}; a topology has [control] and [[regions]]", None, 0, key)
    control = doc.get("control")
    if not isinstance(control, dict):
        raise TopologyError(f"{source}: a [control] table with at least one [[control.hosts]] is required")
    _unknown(control, CONTROL_KEYS, where, None, 0, "[control]")
    api_port = _port(control.get("api_port", 25000), where, None, 0, "api_port")
    hosts_raw = control.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise TopologyError(f"{source}: [control] needs at least one [[control.hosts]] with a name and an address")
    hosts = []
    for i, h in enumerate(hosts_raw):
        _unknown(h, CONTROL_HOST_KEYS, where, "control.hosts", i, "[[control.hosts]]")
        name = h.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise where.error("name must be lower-case letters, digits and '-', starting with a letter",
                              "control.hosts", i, "name")
        hosts.append(ControlHost(name=name, address=_address(h.get("address"), where, "control.hosts", i, "address")))
    store = _store_urls(control.get("store", []), where)
    tls = control.get("store_tls", True)
    if not isinstance(tls, bool):
        raise where.error("store_tls must be true or false", None, 0, "store_tls")
    members = _store_members(control.get("store_members", []), where, tls)
    if members:
        derived = tuple(m.client_url for m in members)
        if "store" in control and set(store) != set(derived):
            raise where.error(f"store lists {', '.join(store) or 'nothing'} but [[control.store_members]] give "
                              f"{', '.join(derived)}: name the members once (store follows from them), or make "
                              "both agree", None, 0, "store")
        store = store or derived
    if len(hosts) > 1 and not store:
        raise TopologyError(f"{source}: several control hosts keep one state in etcd: list its client URLs in "
                            '[control] as store = ["https://ADDRESS:PORT", ...]')
    regions_raw = doc.get("regions")
    if not isinstance(regions_raw, list) or len(regions_raw) < 2:
        raise TopologyError(f"{source}: at least two [[regions]] are needed: a pair spans two regions")
    regions = []
    for i, r in enumerate(regions_raw):
        _unknown(r, REGION_KEYS, where, "regions", i, "[[regions]]")
        name = r.get("cloud_name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise where.error("cloud_name must be lower-case letters, digits and '-', starting with a letter",
                              "regions", i, "cloud_name")
        lat, lon = r.get("latitude", 0.0), r.get("longitude", 0.0)
        for key, v, lim in (("latitude", lat, 90), ("longitude", lon, 180)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -lim <= v <= lim:
                raise where.error(f"{key} must be a number from -{lim} to {lim}", "regions", i, key)
        for key in ("description", "geo_region"):
            if key in r and not isinstance(r[key], str):
                raise where.error(f"{key} must be a string", "regions", i, key)
        base = _port(r.get("port_base", api_port + REGION_PORT_BLOCK * (i + 1)), where, "regions", i, "port_base",
                     span=REGION_PORT_BLOCK - 1)
        regions.append(RegionHost(
            cloud_name=name, description=r.get("description", f"Region {name}"), geo_region=r.get("geo_region", name),
            latitude=float(lat), longitude=float(lon),
            host=_address(r.get("host"), where, "regions", i, "host"), port_base=base))
    _consistent(hosts, api_port, regions, members, where)
    return Topology(control_hosts=tuple(hosts), api_port=api_port, regions=tuple(regions), source=source,
                    store_endpoints=store, store_members=members)


def _consistent(hosts: list[ControlHost], api_port: int, regions: list[RegionHost],
                members: tuple[StoreMember, ...], where: _Where) -> None:
    seen: dict[str, int] = {}
    for i, h in enumerate(hosts):
        if h.name in seen:
            raise where.error(f"control host {h.name!r} is listed twice", "control.hosts", i, "name")
        seen[h.name] = i
    names: dict[str, int] = {}
    for i, r in enumerate(regions):
        if r.cloud_name in names:
            raise where.error(f"region {r.cloud_name!r} is listed twice", "regions", i, "cloud_name")
        names[r.cloud_name] = i
    # Port blocks that share an address must not overlap (two parts on one host).
    used: list[tuple[str, int, int, str]] = [(h.address, api_port, api_port + REGION_PORT_BLOCK - 1,
                                              f"control host {h.name}") for h in hosts]
    for i, r in enumerate(regions):
        lo, hi = r.port_base, r.port_base + REGION_PORT_BLOCK - 1
        for addr, a, b, who in used:
            if addr == r.host and lo <= b and a <= hi:
                raise where.error(f"region {r.cloud_name}'s ports {lo}-{hi} overlap those of {who} on {addr}; "
                                  f"give it another port_base", "regions", i, "port_base")
        used.append((r.host, lo, hi, f"region {r.cloud_name}"))
    for i, m in enumerate(members):
        for port in (m.client_port, m.peer_port):
            for addr, a, b, who in used:
                if addr == m.address and a <= port <= b:
                    key = "client_port" if port == m.client_port else "peer_port"
                    raise where.error(f"store member {m.name}'s port {port} is in the ports {a}-{b} of {who} on "
                                      f"{addr}; give it another {key}", "control.store_members", i, key)


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read the topology file: {exc.strerror}") from None
    return parse_topology(text, source=str(p))
