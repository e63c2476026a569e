"""Pure rendering of Patroni and HAProxy configurations, port blocks, spec validation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pgcrdr.agent.layout import RegionLayout, node_index
from pgcrdr.agentapi.models import ClusterSpec, DbUser, TLSMaterial
from pgcrdr.agent.patroni import (
    PATRONI_LAUNCHER,
    PATRONI_LAUNCHER_NAME,
    NodePaths,
    patroni_argv,
    pg_hba,
    render_patroni_config,
    render_patroni_yaml,
)
from pgcrdr.agent.ports import BLOCK_SIZE, ClusterPorts, allocate, choose_block, load_ports
from pgcrdr.agent.proxy import ProxyNode, render_haproxy_config, server_running
from pgcrdr.agent.wal import DB_SHUTDOWNED, raw_cluster_state
from pgcrdr.agent.validation import spec_problems
from pgcrdr.security.tls import issue_server_cert, make_ca

CA = make_ca("unit test ca")
SRV = issue_server_cert(CA, ["127.0.0.1"])


def spec(**kw: object) -> ClusterSpec:
    base = dict(cluster="pg1", node_count=2, superuser_password="su", replication_password="rp",
                rewind_password="wp", users=[DbUser(username="avnadmin", password="a", kind="primary")],
                tls=TLSMaterial(ca_cert_pem=CA.cert_pem, cert_pem=SRV.cert_pem, key_pem=SRV.key_pem))
    base.update(kw)
    return ClusterSpec(**base)  # type: ignore[arg-type]


def paths(tmp: Path) -> NodePaths:
    return NodePaths(data_dir=tmp / "data", socket_dir=tmp, pg_log_dir=tmp / "log", pgpass=tmp / "pgpass",
                     cert_file=tmp / "c.crt", key_file=tmp / "c.key", ca_file=tmp / "ca.crt")


def test_patroni_config_has_the_required_settings(tmp_path: Path) -> None:
    cfg = render_patroni_config(spec(pg_parameters={"work_mem": "8MB"}), "pg1-2", pg_port=5, rest_port=6,
                                etcd_port=7, paths=paths(tmp_path), pg_bin_dir=Path("/usr/lib/postgresql/15/bin"))
    assert cfg["scope"] == "pg1" and cfg["name"] == "pg1-2"
    assert cfg["etcd3"] == {"hosts": "127.0.0.1:7"}
    dcs = cfg["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 1, 5)
    assert dcs["postgresql"]["use_pg_rewind"] and dcs["postgresql"]["use_slots"]
    p = dcs["postgresql"]["parameters"]
    assert p["wal_log_hints"] == "on" and p["max_wal_senders"] == 10 and p["max_replication_slots"] == 10
    assert "data-checksums" in cfg["bootstrap"]["initdb"]
    pg = cfg["postgresql"]
    assert pg["listen"] == "127.0.0.1:5" and pg["connect_address"] == "127.0.0.1:5"
    assert pg["parameters"]["ssl"] == "on" and pg["parameters"]["password_encryption"] == "scram-sha-256"
    assert pg["parameters"]["min_wal_size"] == "32MB" and pg["parameters"]["work_mem"] == "8MB"
    assert pg["pg_hba"] == pg_hba() and "hostnossl all all 0.0.0.0/0 reject" in pg_hba()
    assert not any("10.0.0.5" in line for line in pg_hba())
    # on a region host, connections arrive through its proxy, from the host's own address
    assert {"hostssl all all 10.0.0.5/32 scram-sha-256", "hostssl replication all 10.0.0.5/32 scram-sha-256"} \
        <= set(pg_hba("10.0.0.5")) and pg_hba("10.0.0.5")[-1] == "hostnossl all all 0.0.0.0/0 reject"
    auth = pg["authentication"]
    assert auth["superuser"] == {"username": "postgres", "password": "su"}
    assert auth["replication"]["username"] == "replicator" and auth["replication"]["sslmode"] == "require"
    assert auth["rewind"]["username"] == "rewind_user"
    assert yaml.safe_load(render_patroni_yaml(cfg)) == cfg


def test_haproxy_config_routes_by_patroni_health() -> None:
    text = render_haproxy_config("pg1", 100, 101, [ProxyNode("pg1-1", 102, 103), ProxyNode("pg1-2", 104, 105)])
    assert "bind 127.0.0.1:100" in text and "bind 127.0.0.1:101" in text
    assert "http-check send meth GET uri /primary" in text and "http-check send meth GET uri /replica" in text
    assert "server pg1-2 127.0.0.1:104 check port 105" in text
    assert "inter 500ms fall 2 rise 1" in text and "retries 0" in text
    # replica-side sessions are cut when their server goes down; primary-side ones are not
    # (a demoted writer's last WAL reaches the other region through them)
    assert "server pg1-2 127.0.0.1:104 check port 105 on-marked-down shutdown-sessions" in text
    assert "server pg1-2 127.0.0.1:104 check port 105\n" in text
    # a 1-node cluster still answers on the replica port: falls back to the primary backend
    assert "use_backend replica_nodes if { nbsrv(replica_nodes) gt 0 }" in text
    assert "mode tcp" in text
    assert "stats socket" not in text  # no runtime API unless a socket is given


def test_haproxy_runtime_socket_and_server_state(tmp_path: Path) -> None:
    text = render_haproxy_config("pg1", 100, 101, [ProxyNode("pg1-1", 102, 103)],
                                 runtime_socket=tmp_path / "run" / "haproxy.sock")
    assert f"    stats socket {tmp_path}/run/haproxy.sock mode 600 level admin\n" in text
    # `show servers state primary_nodes` of HAProxy 2.6: srv_op_state 2 is up, 0 down
    header = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight\n")
    up = header + "3 primary_nodes 1 pg1-1 127.0.0.1 2 0 1 1\n3 primary_nodes 2 pg1-2 127.0.0.1 0 0 1 1\n"
    assert server_running(up, "pg1-1")
    assert not server_running(up, "pg1-2")
    assert not server_running(up, "pg1-3")  # unknown server
    assert not server_running("No such backend.\n", "pg1-1")
    assert not server_running("", "pg1-1")


def test_raw_cluster_state_reads_pg_control_without_a_process(tmp_path: Path) -> None:
    import sys
    (tmp_path / "global").mkdir()
    control = tmp_path / "global" / "pg_control"
    for state in (6, DB_SHUTDOWNED):  # in production, shut down
        control.write_bytes((7).to_bytes(8, sys.byteorder) + (1300).to_bytes(4, sys.byteorder)
                            + (202209061).to_bytes(4, sys.byteorder) + state.to_bytes(4, sys.byteorder)
                            + bytes(8192 - 20))
        assert raw_cluster_state(tmp_path) == state
    control.write_bytes(b"\0" * 10)  # truncated
    assert raw_cluster_state(tmp_path) is None
    assert raw_cluster_state(tmp_path / "missing") is None


def test_port_blocks() -> None:
    p = ClusterPorts(base=1000)
    assert (p.primary, p.replica, p.pg(1), p.rest(1), p.pg(3), p.rest(3)) == (1000, 1001, 1002, 1003, 1006, 1007)
    with pytest.raises(ValueError):
        p.pg(4)
    assert choose_block((1010, 2000), set()) == 1010
    assert choose_block((1010, 2000), {1010, 1018}) == 1026
    assert choose_block((1010, 2000), set(), busy_ports={1012}) == 1018
    with pytest.raises(LookupError):
        choose_block((1010, 1010 + BLOCK_SIZE), {1010})


def test_allocation_is_persisted_and_first_free(tmp_path: Path) -> None:
    a = allocate(tmp_path, "a", (20010, 21000))
    b = allocate(tmp_path, "b", (20010, 21000))
    assert b.base == a.base + BLOCK_SIZE
    assert allocate(tmp_path, "a", (20010, 21000)) == a
    assert load_ports(tmp_path / "b" / "ports.json") == b
    (tmp_path / "a" / "ports.json").unlink()
    c = allocate(tmp_path, "c", (20010, 21000))
    assert c.base == a.base  # freed block is reused


def test_node_names() -> None:
    assert node_index("pg1", "pg1-2") == 2
    assert node_index("pg1", "pg1-4") is None and node_index("pg1", "other-1") is None


def test_long_paths_get_a_short_socket_dir(tmp_path: Path) -> None:
    lay = RegionLayout(Path("/tmp/home/regions/r")).cluster("c" * 50)
    assert lay.socket_dir("c" * 50 + "-1").parent == Path("/tmp/home/regions/r/run")
    lay = RegionLayout(tmp_path / ("x" * 80)).cluster("c" * 60)
    assert len(str(lay.socket_dir("c" * 60 + "-1"))) < 60
    short = RegionLayout(Path("/r")).cluster("c")
    assert short.socket_dir("c-1") == short.node_dir("c-1")


def test_haproxy_runtime_socket_fits_haproxys_limit(tmp_path: Path) -> None:
    """HAProxy refuses a stats socket path over 97 bytes (it binds "<path>.<pid>.tmp" first):
    a lab's cluster directory was 98 (the copy's HAProxy never started)."""
    short = RegionLayout(Path("/r")).cluster("c")
    assert short.proxy_socket == short.dir / "run" / "haproxy.sock"
    lab = RegionLayout(Path("/tmp/pgcrdr-lab-rp509-mbmovqle/r1/regions/rp-america")).cluster("rp-primary-dr-5d29d0")
    assert lab.proxy_socket.parent == Path("/tmp/pgcrdr-lab-rp509-mbmovqle/r1/regions/rp-america/run") / \
        lab.proxy_socket.parent.name
    very = RegionLayout(tmp_path / ("x" * 90)).cluster("c" * 60)
    assert str(very.proxy_socket).startswith("/tmp/pgcrdr-haproxy-")
    for lay in (short, lab, very):
        assert len(str(lay.proxy_socket)) <= 90


def test_valid_spec_has_no_problems() -> None:
    assert spec_problems(spec(), "pg1") == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(cluster="other"), "differs from the URL"),
        (dict(users=[DbUser(username="postgres", password="x")]), "reserved"),
        (dict(users=[DbUser(username="bad name", password="x")]), "invalid username"),
        (dict(users=[DbUser(username="a", password="x", kind="primary"),
                     DbUser(username="b", password="x", kind="primary")]), "at most one"),
        (dict(databases=["template1"]), "reserved"),
        (dict(databases=["d;drop"]), "invalid database name"),
        (dict(pg_parameters={"port": "1"}), "managed by pgcrdr"),
        (dict(tls=TLSMaterial(ca_cert_pem=CA.cert_pem, cert_pem="nope", key_pem=SRV.key_pem)), "cert_pem"),
        (dict(tls=TLSMaterial(ca_cert_pem=CA.cert_pem, cert_pem=SRV.cert_pem, key_pem=CA.key_pem)),
         "does not match"),
        (dict(superuser_password=""), "superuser_password"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(change: dict[str, object], expected: str) -> None:
    problems = spec_problems(spec(**change), "pg1")
    assert any(expected in p for p in problems), problems


def test_last_error_prefers_postgres_fatal(tmp_path: Path) -> None:
    from pgcrdr.agent.postgres import last_error_line

    pglog = tmp_path / "pg.log"
    patroni = tmp_path / "patroni.log"
    pglog.write_text("LOG: starting\n")
    patroni.write_text('x FATAL:  could not access file "lib"\nTraceback (most recent call last):\n'
                       "patroni.exceptions.PatroniFatalException: Failed to bootstrap cluster\n")
    assert "could not access file" in (last_error_line([pglog, patroni]) or "")
    patroni.write_text("Traceback (most recent call last):\nKeyError: 'x'\n")
    assert last_error_line([pglog, patroni]) == "KeyError: 'x'"
    assert last_error_line([tmp_path / "missing"]) is None


NODE_PYTHON = Path("/opt/pgcrdr/node-venv/bin/python")


def test_patroni_runs_through_the_launcher_with_its_yml_on_the_command_line(tmp_path: Path) -> None:
    yml = tmp_path / "n1" / "patroni.yml"
    argv = patroni_argv(Path("/venv"), yml)
    assert argv == ["/venv/bin/python", str(tmp_path / "n1" / PATRONI_LAUNCHER_NAME), str(yml)]


def _load_launcher(path: Path) -> str:
    """Python lines that import the launcher as multiprocessing "spawn" does (not as __main__)."""
    return ("import importlib.util, socket, sys, time, types\n"
            f"spec = importlib.util.spec_from_file_location('launcher', {str(path)!r})\n"
            "launcher = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(launcher)\n")


@pytest.mark.skipif(not NODE_PYTHON.exists(), reason="no node virtualenv with Patroni")
def test_launcher_imported_by_spawn_imports_no_patroni(tmp_path: Path) -> None:
    """Patroni's "spawn" child (which only starts the postmaster) imports the launcher again:
    it must not pay for importing Patroni's etcd3 client there, nor start a Patroni."""
    launcher = tmp_path / PATRONI_LAUNCHER_NAME
    launcher.write_text(PATRONI_LAUNCHER)
    probe = _load_launcher(launcher) + "print(sorted(m for m in sys.modules if m.startswith('patroni')))\n"
    out = subprocess.run([str(NODE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not NODE_PYTHON.exists(), reason="no node virtualenv with Patroni")
def test_launcher_gives_patronis_etcd3_sockets_tcp_nodelay(tmp_path: Path) -> None:
    """Without it every etcd write of Patroni waits ~40 ms for a delayed ACK (decisions.md,
    issue 14)."""
    launcher = tmp_path / PATRONI_LAUNCHER_NAME
    launcher.write_text(PATRONI_LAUNCHER)
    probe = _load_launcher(launcher) + (
        "launcher._tcp_nodelay()\n"
        "from patroni.dcs.etcd3 import Etcd3\n"
        "me = types.SimpleNamespace(ttl=20, loop_wait=1, _retry=types.SimpleNamespace(deadline=5))\n"
        "s = socket.socket()\n"
        "Etcd3.set_socket_options(me, s, None)\n"
        "print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),\n"
        "      s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))\n"
    )
    out = subprocess.run([str(NODE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]  # TCP_NODELAY added, Patroni's keepalive kept


@pytest.mark.skipif(not NODE_PYTHON.exists(), reason="no node virtualenv with Patroni")
def test_launcher_remembers_the_archive_settings_per_configuration(tmp_path: Path) -> None:
    """A demote to a standby cluster asks `postgres -C` for archive_mode and archive_command
    (15-25 ms each, decisions.md, issue 14): the launcher answers again from memory while the
    configuration files are unchanged, and asks again once one changed."""
    launcher = tmp_path / PATRONI_LAUNCHER_NAME
    launcher.write_text(PATRONI_LAUNCHER)
    data = tmp_path / "data"
    data.mkdir()
    (data / "postgresql.conf").write_text("archive_mode = on\n")
    calls = tmp_path / "calls"
    fake_postgres = tmp_path / "postgres"
    fake_postgres.write_text(f"#!/bin/sh\necho \"$4\" >> {calls}\necho value-of-$4\n")
    fake_postgres.chmod(0o755)
    probe = _load_launcher(launcher) + (
        "launcher._remember_archive_settings()\n"
        "from patroni.postgresql import Postgresql\n"
        f"pg = types.SimpleNamespace(data_dir={str(data)!r}, _data_dir={str(data)!r},\n"
        f"    config=types.SimpleNamespace(postgresql_conf={str(data / 'postgresql.conf')!r}),\n"
        f"    pgcommand=lambda cmd: {str(fake_postgres)!r})\n"
        "a = [Postgresql.get_guc_value(pg, 'archive_command') for _ in range(2)]\n"
        f"open({str(data / 'postgresql.conf')!r}, 'a').write(\"synchronous_standby_names = 'n2'\\n\")\n"
        "a.append(Postgresql.get_guc_value(pg, 'archive_command'))\n"
        "Postgresql.get_guc_value(pg, 'port'); Postgresql.get_guc_value(pg, 'port')\n"
        f"open({str(data / 'postgresql.conf')!r}, 'a').write('archive_timeout = 60s\\n')\n"
        "b = Postgresql.get_guc_value(pg, 'archive_command')\n"
        "print(a[0], b)\n"
    )
    out = subprocess.run([str(NODE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["value-of-archive_command", "value-of-archive_command"]
    # archive_command asked once for three reads (a synchronous_standby_names line written between
    # them changes nothing), then again after another change; other settings each time
    assert calls.read_text().split() == ["archive_command", "port", "port", "archive_command"]


@pytest.mark.skipif(not NODE_PYTHON.exists(), reason="no node virtualenv with Patroni")
def test_launcher_sees_postgresql_started_within_a_fraction_of_a_second(tmp_path: Path) -> None:
    """Patroni asks pg_isready once a second while PostgreSQL starts; through the launcher the
    pause grows from 50 ms to Patroni's 1 s, with Patroni's answers (started, failed, timed out)."""
    launcher = tmp_path / PATRONI_LAUNCHER_NAME
    launcher.write_text(PATRONI_LAUNCHER)
    probe = _load_launcher(launcher) + (
        "launcher._prompt_startup()\n"
        "from patroni.postgresql import Postgresql\n"
        "from patroni.postgresql.misc import PostgresqlState\n"
        "class Starting:  # PostgreSQL accepts connections at the 3rd check\n"
        "    def __init__(self, ready_at, state=PostgresqlState.RUNNING):\n"
        "        self.checks, self.ready_at, self.end = 0, ready_at, state\n"
        "        self.state = PostgresqlState.STARTING\n"
        "        self.cancellable = types.SimpleNamespace(is_cancelled=False)\n"
        "        self.t0 = time.monotonic()\n"
        "    def is_starting(self): return self.state == PostgresqlState.STARTING\n"
        "    def time_in_state(self): return time.monotonic() - self.t0\n"
        "    def check_startup_state_changed(self):\n"
        "        self.checks += 1\n"
        "        if self.checks >= self.ready_at:\n"
        "            self.state = self.end\n"
        "            return True\n"
        "        return False\n"
        "t = time.monotonic(); a = Starting(3); r1 = Postgresql.wait_for_startup(a); d1 = time.monotonic() - t\n"
        "b = Starting(3, PostgresqlState.START_FAILED); r2 = Postgresql.wait_for_startup(b)\n"
        "t = time.monotonic(); c = Starting(10**6); r3 = Postgresql.wait_for_startup(c, timeout=2)\n"
        "d3 = time.monotonic() - t\n"
        "print(r1, round(d1, 2), a.checks, r2, r3, round(d3), c.checks)\n"
    )
    out = subprocess.run([str(NODE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    started, took, checks, failed, timed_out, waited, slow_checks = out.stdout.split()
    assert (started, checks, failed, timed_out) == ("True", "3", "False", "None")
    assert float(took) < 0.5  # 50 + 100 ms of pauses, where Patroni alone waits 2 s
    assert int(waited) in (2, 3) and int(slow_checks) <= 8  # then once a second, as Patroni


def test_server_sessions_reads_scur_of_one_server_from_show_stat() -> None:
    from pgcrdr.haproxy import server_sessions

    stat = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot\n"
            "f,FRONTEND,,,7,9,2000,40\n"
            "target,pg,0,0,3,5,,30\n"
            "target,BACKEND,0,0,3,5,200,30\n\n")
    assert server_sessions(stat, "target", "pg") == 3
    assert server_sessions(stat.replace(",3,5,,30", ",0,5,,30"), "target", "pg") == 0
    assert server_sessions(stat, "target", "other") is None
    assert server_sessions("Unknown command\n", "target", "pg") is None
