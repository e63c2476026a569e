"""Pure parts of the Service URI endpoint layer: port allocation, config rendering, the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pgcrdr.agentapi.models import DbUser, Endpoint, TLSMaterial
from pgcrdr.endpoint import EndpointSpec, allocate_ports
from pgcrdr.endpoint.render import (
    ADMIN_USER,
    EndpointLayout,
    haproxy_static_part,
    render_haproxy_config,
    render_pgbouncer_ini,
    render_userlist,
)

TLS = TLSMaterial(ca_cert_pem="ca", cert_pem="cert", key_pem="key")
SOCK = Path("/h/endpoints/pg-x/run/haproxy.sock")


def ini(target: Endpoint | None) -> str:
    lay = EndpointLayout(Path("/h/endpoints/pg-x"))
    return render_pgbouncer_ini("pg-x", "127.0.0.1", 7002, target, userlist=lay.userlist, socket_dir=lay.socket_dir,
                                server_crt=lay.server_crt, server_key=lay.server_key, ca_crt=lay.ca_crt)


def settings_of(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(";"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_allocate_ports_takes_the_two_lowest_free_ports_of_a_half_open_range() -> None:
    assert allocate_ports(set(), 100, 110) == (100, 101)
    assert allocate_ports({100, 102}, 100, 110) == (101, 103)
    with pytest.raises(ValueError, match="no two free ports"):
        allocate_ports({100}, 100, 102)  # 102 is outside [100, 102)
    with pytest.raises(ValueError):
        allocate_ports(set(), 100, 101)
    assert allocate_ports(set(range(100, 108)), 100, 110) == (108, 109)


def test_haproxy_config_forwards_tls_only_to_the_target() -> None:
    cfg = render_haproxy_config("pg-x", "127.0.0.1", 7001, Endpoint(host="10.0.0.5", port=5432), SOCK)
    assert "    bind 127.0.0.1:7001" in cfg
    assert "    server pg 10.0.0.5:5432" in cfg.splitlines()
    assert "mode tcp" in cfg and "check" not in cfg  # no health check: the control plane decides
    assert f"stats socket {SOCK} mode 600 level admin" in cfg
    # an SSLRequest or a CancelRequest passes, anything else is rejected
    assert "req.payload(0,8) -m bin 0000000804d2162f" in cfg
    assert "req.payload(0,8) -m bin 0000001004d2162e" in cfg
    assert cfg.index("content accept") < cfg.index("tcp-request content reject")


def test_haproxy_config_without_target_refuses_connections() -> None:
    cfg = render_haproxy_config("pg-x", "127.0.0.1", 7001, None, SOCK)
    assert "    server pg 127.0.0.1:1 disabled" in cfg.splitlines()
    assert "tcp-request connection reject if { nbsrv(target) eq 0 }" in cfg


def test_haproxy_static_part_ignores_only_the_target() -> None:
    a = render_haproxy_config("pg-x", "127.0.0.1", 7001, Endpoint(host="h1", port=1), SOCK)
    b = render_haproxy_config("pg-x", "127.0.0.1", 7001, None, SOCK)
    c = render_haproxy_config("pg-x", "127.0.0.1", 7009, Endpoint(host="h1", port=1), SOCK)
    assert a != b and haproxy_static_part(a) == haproxy_static_part(b)
    assert haproxy_static_part(a) != haproxy_static_part(c)


def test_pgbouncer_ini_transaction_pooling_scram_tls_both_sides() -> None:
    text = ini(Endpoint(host="10.0.0.5", port=5432))
    s = settings_of(text)
    assert s["*"] == "host=10.0.0.5 port=5432"
    assert text.index("[databases]") < text.index("* =") < text.index("[pgbouncer]")
    assert s["pool_mode"] == "transaction"
    assert s["auth_type"] == "scram-sha-256" and s["auth_file"] == "/h/endpoints/pg-x/userlist.txt"
    assert s["admin_users"] == ADMIN_USER
    assert s["unix_socket_dir"] == "/h/endpoints/pg-x/run"
    assert (s["listen_addr"], s["listen_port"]) == ("127.0.0.1", "7002")
    assert s["client_tls_sslmode"] == "require" and s["server_tls_sslmode"] == "require"
    assert s["client_tls_cert_file"] == "/h/endpoints/pg-x/tls/server.crt"
    assert s["client_tls_key_file"] == "/h/endpoints/pg-x/tls/server.key"
    assert s["ignore_startup_parameters"] == "extra_float_digits,options"
    assert int(s["default_pool_size"]) > 0 and int(s["max_client_conn"]) >= int(s["default_pool_size"])
    assert "pidfile" not in s and "logfile" not in s  # foreground; our pid file, our log


def test_pgbouncer_ini_without_target_serves_no_database() -> None:
    s = settings_of(ini(None))
    assert "*" not in s


def test_userlist_quotes_and_puts_the_admin_first() -> None:
    text = render_userlist([DbUser(username="avnadmin", password='p"w'), DbUser(username="u2", password="x y")],
                           "adminpw")
    assert text.splitlines() == [f'"{ADMIN_USER}" "adminpw"', '"avnadmin" "p""w"', '"u2" "x y"']
    with pytest.raises(ValueError, match="twice or is reserved"):
        render_userlist([DbUser(username=ADMIN_USER, password="x")], "adminpw")
    with pytest.raises(ValueError, match="twice"):
        render_userlist([DbUser(username="a", password="x"), DbUser(username="a", password="y")], "adminpw")
    with pytest.raises(ValueError, match="newlines"):
        render_userlist([DbUser(username="a", password="x\ny")], "adminpw")


def test_spec_validation() -> None:
    ok = EndpointSpec(name="pg-demo-1a2b3c", direct_port=7001, pooled_port=7002, tls=TLS)
    assert ok.target is None and ok.users == []
    for bad in ({"name": "Bad_Name"}, {"pooled_port": 7001}, {"direct_port": 0}, {"name": "x" * 70}):
        with pytest.raises(ValidationError):
            EndpointSpec.model_validate({**ok.model_dump(), **bad})


def test_layout_moves_sockets_out_of_long_paths() -> None:
    short = EndpointLayout(Path("/var/lib/pgcrdr/endpoints/pg-demo"))
    assert short.socket_dir == short.dir / "run"
    long = EndpointLayout(Path("/tmp/" + "d" * 80 + "/endpoints/pg-demo"))
    assert str(long.socket_dir).startswith("/tmp/pgcrdr-ep-")
    assert len(str(long.socket_dir / ".s.PGSQL.65535.lock")) < 108
    assert long.socket_dir == EndpointLayout(long.dir).socket_dir  # stable
