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
