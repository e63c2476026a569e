"""The topology file: what a deployment looks like, and every way it can be wrong, each refused
with a message naming the file and the line."""

from __future__ import annotations

import pytest

from pgcrdr.topology import TopologyError, load_topology, parse_topology

GOOD = """\
[control]
api_port = 25000

[[control.hosts]]
name = "control-1"
address = "10.77.0.10"

[[regions]]
cloud_name = "dc-europe-west1"
description = "Europe, Belgium - DC 1"
geo_region = "europe"
latitude = 50.45
longitude = 3.82
host = "10.77.0.11"

[[regions]]
cloud_name = "dc-us-east1"
host = "10.77.0.12"
port_base = 27000
"""


def test_a_three_host_topology():
    t = parse_topology(GOOD, "deploy.toml")
    assert [h.address for h in t.control_hosts] == ["10.77.0.10"]
    assert [(r.cloud_name, r.host, r.port_base) for r in t.regions] == [
        ("dc-europe-west1", "10.77.0.11", 26000), ("dc-us-east1", "10.77.0.12", 27000)]
    assert t.region("dc-us-east1").description == "Region dc-us-east1"
    assert t.api_port == 25000


@pytest.mark.parametrize("change,line,fragment", [
    (("host = \"10.77.0.12\"", "host = \"db.example\""), 18, "is not an IP address"),
    (("port_base = 27000", "port_base = 80"), 19, "port_base must be a whole number"),
    (("latitude = 50.45", "latitude = 95"), 12, "latitude must be a number"),
    (("geo_region = \"europe\"", "geo_region = \"europe\"\nzone = 3"), 12, "unknown key 'zone'"),
    (("cloud_name = \"dc-us-east1\"", "cloud_name = \"dc-europe-west1\""), 17, "listed twice"),
    (("cloud_name = \"dc-us-east1\"", "cloud_name = \"DC_US\""), 17, "cloud_name must be lower-case"),
    (("address = \"10.77.0.10\"", "address = \"0.0.0.0\""), 6, "cannot be a host's address"),
    (("host = \"10.77.0.12\"\nport_base = 27000", "host = \"10.77.0.11\"\nport_base = 26500"), 19, "overlap"),
    (("api_port = 25000", "api_port = 25000\n[extra]"), None, "unknown table 'extra'"),
])
def test_a_wrong_file_is_refused_naming_the_line(change, line, fragment):
    text = GOOD.replace(*change)
    with pytest.raises(TopologyError) as exc:
        parse_topology(text, "deploy.toml")
    msg = str(exc.value)
    assert fragment in msg, msg
    if line is not None:
        assert msg.startswith(f"deploy.toml:{line}:"), msg


def test_syntax_errors_and_missing_parts():
    with pytest.raises(TopologyError, match=r"deploy.toml: not valid TOML: .*line 2"):
        parse_topology("[control]\napi_port = = 1\n", "deploy.toml")
    with pytest.raises(TopologyError, match="a \\[control\\] table"):
        parse_topology("[[regions]]\ncloud_name='a'\nhost='10.0.0.1'\n", "t")
    with pytest.raises(TopologyError, match="at least two \\[\\[regions\\]\\]"):
        parse_topology(GOOD.split("[[regions]]")[0] + "[[regions]]\ncloud_name='a'\nhost='10.77.0.2'\n", "t")


def test_an_unreadable_file_says_so(tmp_path):
    with pytest.raises(TopologyError, match="cannot read the topology file"):
        load_topology(tmp_path / "missing.toml")
    f = tmp_path / "t.toml"
    f.write_text(GOOD)
    assert load_topology(f).source == str(f)


def test_a_lab_plan_is_pure_and_keeps_to_its_own_addresses():
    from pgcrdr.lab import LabError, plan_lab, up_commands

    lab = plan_lab("ab12", regions=2, subnet=9)
    assert [h.address for h in lab.hosts] == ["10.249.9.10", "10.249.9.11", "10.249.9.12"]
    assert all(len(h.bridge_port) <= 15 for h in lab.hosts)
    cmds = up_commands(lab)
    # every link is created inside a namespace: nothing is added to the machine's own interfaces
    assert all("netns" in c for c in cmds if c[:3] == ["ip", "link", "add"])
    for bad in ({"lab_id": "A B"}, {"lab_id": "x", "regions": 0}, {"lab_id": "x", "subnet": 300}):
        with pytest.raises(LabError):
            plan_lab(**bad)


MEMBERS = """
[[control.store_members]]
name = "etcd-a"
address = "10.77.0.11"

[[control.store_members]]
name = "etcd-b"
address = "10.77.0.12"
client_port = 3379
peer_port = 3380
"""


def with_members(extra: str = "", store: str | None = None) -> str:
    head, rest = GOOD.split("[[regions]]", 1)
    control = head.replace("api_port = 25000", f"api_port = 25000\nstore = {store}" if store else "api_port = 25000")
    return control + MEMBERS + extra + "\n[[regions]]" + rest


def test_store_members_give_the_store_endpoints():
    t = parse_topology(with_members(), "deploy.toml")
    # TLS by default: the members pgcrdr runs serve clients and peers with certificates
    assert [(m.name, m.client_url, m.peer_url) for m in t.store_members] == [
        ("etcd-a", "https://10.77.0.11:2379", "https://10.77.0.11:2380"),
        ("etcd-b", "https://10.77.0.12:3379", "https://10.77.0.12:3380")]
    assert t.store_endpoints == ("https://10.77.0.11:2379", "https://10.77.0.12:3379")
    same = '["https://10.77.0.12:3379", "https://10.77.0.11:2379"]'
    assert parse_topology(with_members(store=same)).store_endpoints == ("https://10.77.0.12:3379",
                                                                        "https://10.77.0.11:2379")
    plain = parse_topology(with_members().replace("api_port = 25000", "api_port = 25000\nstore_tls = false"))
    assert plain.store_endpoints == ("http://10.77.0.11:2379", "http://10.77.0.12:3379")
    with pytest.raises(TopologyError, match="store_tls must be true or false"):
        parse_topology(with_members().replace("api_port = 25000", 'api_port = 25000\nstore_tls = "yes"'))


@pytest.mark.parametrize("text,fragment", [
    (with_members(store='["https://10.77.0.99:2379"]'), "store lists https://10.77.0.99:2379 but"),
    (with_members('[[control.store_members]]\nname = "etcd-a"\naddress = "10.77.0.13"\n'), "listed twice"),
    (with_members('[[control.store_members]]\nname = "etcd-c"\naddress = "10.77.0.12"\nclient_port = 3380\n'),
     "uses a port of member 'etcd-b'"),
    (with_members('[[control.store_members]]\nname = "etcd-c"\naddress = "10.77.0.11"\nclient_port = 26005\n'
                  'peer_port = 26006\n'), "is in the ports 26000-26999 of region dc-europe-west1"),
    (with_members('[[control.store_members]]\nname = "etcd-c"\naddress = "10.77.0.13"\nsize = 1\n'),
     "unknown key 'size'"),
])
def test_inconsistent_store_members_are_refused_naming_the_line(text, fragment):
    with pytest.raises(TopologyError) as exc:
        parse_topology(text, "deploy.toml")
    assert fragment in str(exc.value) and str(exc.value).startswith("deploy.toml:"), str(exc.value)


def test_a_lab_with_a_witness_and_replicas_on_the_region_hosts():
    from pgcrdr.lab import plan_lab, topology_text

    lab = plan_lab("ab12", regions=2, subnet=9, witness=True)
    assert [(h.name, h.address) for h in lab.hosts][-1] == ("w", "10.249.9.13")
    t = parse_topology(topology_text(lab, ["a", "b"], replicas=("r0", "r1"), store_hosts=("r0", "r1", "w")))
    assert [h.address for h in t.control_hosts] == ["10.249.9.11", "10.249.9.12"]
    assert t.store_endpoints == ("https://10.249.9.11:2379", "https://10.249.9.12:2379", "https://10.249.9.13:2379")
    assert [r.host for r in t.regions] == ["10.249.9.11", "10.249.9.12"]


def test_every_replica_serves_the_service_uri_so_one_uri_names_them_all(tmp_path):
    from urllib.parse import urlsplit

    import psycopg

    from pgcrdr.api.serialize import multi_host_uri
    from pgcrdr.config import Settings
    from pgcrdr.lab import plan_lab, topology_text

    lab = plan_lab("ab12", regions=2, subnet=9, witness=True)
    topo = parse_topology(topology_text(lab, ["a", "b"], replicas=("r0", "r1"), store_hosts=("r0", "r1", "w")))
    settings = Settings.from_topology(topo, home=tmp_path, control_host="pgl-ab12-r1")
    assert (settings.host, settings.control_host) == ("10.249.9.12", "pgl-ab12-r1")
    uri = multi_host_uri("avnadmin", "p@ss", settings.control_addresses, 25100)
    assert uri == ("postgres://avnadmin:p%40ss@10.249.9.11:25100,10.249.9.12:25100/defaultdb"
                   "?sslmode=require&target_session_attrs=read-write")
    info = psycopg.conninfo.conninfo_to_dict(uri)  # libpq reads it as two hosts
    assert (info["host"], info["port"], info["target_session_attrs"]) == ("10.249.9.11,10.249.9.12", "25100,25100",
                                                                          "read-write")
    assert urlsplit(multi_host_uri("u", "p", ("fd00::1", "10.0.0.1"), 5)).netloc.endswith("@[fd00::1]:5,10.0.0.1:5")


def test_node_certificates_name_every_replicas_address(tmp_path):
    """Each replica's endpoint passes TLS through to the nodes: a client verifying the server
    (sslmode=verify-full) through any replica finds that replica's address in the certificate."""
    from cryptography import x509

    from pgcrdr.config import Settings
    from pgcrdr.controlplane.services import ServiceManager
    from pgcrdr.controlplane.store import SQLiteStore
    from pgcrdr.lab import plan_lab, topology_text

    lab = plan_lab("ab12", regions=2, subnet=9, witness=True)
    topo = parse_topology(topology_text(lab, ["a", "b"], replicas=("r0", "r1"), store_hosts=("r0", "r1", "w")))
    settings = Settings.from_topology(topo, home=tmp_path, control_host="pgl-ab12-r1")
    store = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        manager = ServiceManager(store, settings)
        manager.create_project("p")
        cert = x509.load_pem_x509_certificate(manager._server_cert(store.get_project("p"), "pg", "b").cert_pem.encode())
    finally:
        store.close()
    ips = {str(ip) for ip in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
           .get_values_for_type(x509.IPAddress)}
    assert ips == {"10.249.9.11", "10.249.9.12"}  # both replicas; region b's host is r1's address too
