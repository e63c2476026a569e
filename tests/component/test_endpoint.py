"""Service URI endpoints (HAProxy + PgBouncer run by the control plane) against two real
PostgreSQL 15 servers standing for the writers of the two regions of a CRDR pair.

Reads like a planned switch: clients use the direct and pooled URIs of server 1, the endpoint is
paused, repointed to server 2 and resumed while clients keep running transactions. Every
process started here is stopped in teardown, by PID, even when a test fails.

Clients of the pooled URI pass ``prepare_threshold=None``: in transaction pooling consecutive
transactions may run on different server connections, so server-side prepared statements
(which psycopg makes after 5 executions of a query) would not be found.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pgcrdr import processes as proc
from pgcrdr.agentapi.models import DbUser, Endpoint, TLSMaterial
from pgcrdr.config import Settings
from pgcrdr.endpoint import EndpointError, EndpointManager, EndpointSpec, PauseTimeout, stop_all_endpoints
from pgcrdr.security.tls import issue_server_cert, make_ca

pytestmark = pytest.mark.component

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "pgcrdr"
PORT_BASE = 31000  # PostgreSQL on +1, +2; endpoints from +11
USER, PASSWORD = "app", "app-pw-1"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _as_node_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PgServer:
    name: str
    port: int
    data: Path
    sockdir: Path

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        r = subprocess.run(_as_node_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                                          str(self.data.parent / f"{self.name}.log"), "-w", "-t", "30", "start"]),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

    def stop(self) -> None:
        """Immediate stop; SIGKILL of the postmaster tree by PID if that fails."""
        pid = proc.postmaster_pid(self.data)
        if pid is None:
            return
        subprocess.run(_as_node_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                      "-t", "10", "stop"]), capture_output=True, timeout=30)
        if proc.is_running(pid):
            proc.kill_postmaster_tree(pid)
            proc.wait_gone([pid], 5)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(host=str(self.sockdir), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)


def _init_server(root: Path, name: str, port: int, tls: TLSMaterial, servers: list[PgServer]) -> PgServer:
    """initdb + start + a role and a database; the server is in ``servers`` (for teardown)
    before it is started."""
    data = root / name
    sockdir = root / f"{name}-sock"
    sockdir.mkdir()
    r = subprocess.run(_as_node_user([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                      "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    files = {"server.crt": tls.cert_pem, "server.key": tls.key_pem}
    for fname, content in files.items():
        (data / fname).write_text(content)
    conf = "\n".join([
        f"port = {port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{sockdir}'",
        "ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'",
        "fsync = off", "synchronous_commit = off", "full_page_writes = off", "max_connections = 100",
        "shared_buffers = 16MB", "log_min_messages = warning", "",
    ])
    with open(data / "postgresql.conf", "a") as f:
        f.write(conf)
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    if os.geteuid() == 0:
        ids = proc.node_user_ids(Settings(home=root, port_base=0))
        assert ids is not None
        for p in [sockdir, *(data / f for f in ("server.crt", "server.key", "postgresql.conf", "pg_hba.conf"))]:
            os.chown(p, *ids)
    (data / "server.key").chmod(0o600)
    srv = PgServer(name=name, port=port, data=data, sockdir=sockdir)
    servers.append(srv)
    srv.start()
    with srv.admin() as c:
        c.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        c.execute(f"CREATE DATABASE appdb OWNER {USER}")
    with psycopg.connect(host=str(sockdir), port=port, user="postgres", dbname="appdb", autocommit=True) as c:
        c.execute("CREATE TABLE ticks (id bigserial PRIMARY KEY, client int, n int)")
        c.execute(f"ALTER TABLE ticks OWNER TO {USER}")
    return srv


@dataclass
class Env:
    root: Path
    settings: Settings
    manager: EndpointManager
    pg1: PgServer
    pg2: PgServer
    tls: TLSMaterial
    ports: list[int] = field(default_factory=list)

    def spec(self, name: str, direct: int, pooled: int, target: PgServer | None, **kw) -> EndpointSpec:  # noqa: ANN003
        return EndpointSpec(name=name, direct_port=direct, pooled_port=pooled,
                            target=target.endpoint if target else None,
                            users=[DbUser(username=USER, password=PASSWORD, kind="primary")], tls=self.tls, **kw)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if os.geteuid() == 0:
        subprocess.run(["id", OS_USER], check=True, capture_output=True)
    base = next((b for b in range(PORT_BASE, PORT_BASE + 2000, 50)
                 if all(_port_free(b + k) for k in (1, 2, *range(11, 21)))), None)
    assert base is not None, "no free ports for the endpoint tests"
    root = Path(tempfile.mkdtemp(prefix="pgcrdr-ep-ct-", dir="/tmp"))
    root.chmod(0o755)
    settings = Settings(home=root / "home", port_base=base, os_user=OS_USER)
    settings.home.mkdir()
    settings.home.chmod(0o755)
    if os.geteuid() == 0:
        ids = proc.node_user_ids(settings)
        assert ids is not None
        os.chown(root, *ids)
    ca = make_ca("pgcrdr endpoint test CA")
    cert = issue_server_cert(ca, ["127.0.0.1", "localhost"])
    tls = TLSMaterial(ca_cert_pem=ca.cert_pem, cert_pem=cert.cert_pem, key_pem=cert.key_pem)
    servers: list[PgServer] = []
    manager = EndpointManager(settings)
    try:
        _init_server(root, "pg1", base + 1, tls, servers)
        _init_server(root, "pg2", base + 2, tls, servers)
        yield Env(root=root, settings=settings, manager=manager, pg1=servers[0], pg2=servers[1], tls=tls,
                  ports=list(range(base + 11, base + 21)))
    finally:
        stop_all_endpoints(settings)
        for s in servers:
            s.stop()
        left = proc.processes_under(root)
        for pid in left:
            proc.signal_pid(pid, signal.SIGKILL)
        if os.environ.get("PGCRDR_KEEP_TEST_HOME"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------------

def connect(port: int, *, pooled: bool, user: str = USER, password: str = PASSWORD, sslmode: str = "require",
            autocommit: bool = True) -> psycopg.Connection:
    kw = {"prepare_threshold": None} if pooled else {}
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="appdb",
                           sslmode=sslmode, connect_timeout=5, autocommit=autocommit, **kw)


def server_port(conn: psycopg.Connection) -> int:
    row = conn.execute("SHOW port").fetchone()
    assert row is not None
    return int(row[0])


def alive(pid: int | None) -> bool:
    return proc.is_running(pid)


@dataclass
class Client:
    """Runs small write transactions through the pooled URI in a loop; records every error and
    the completion time and server port of every commit."""

    port: int
    client_id: int
    errors: list[str] = field(default_factory=list)
    commits: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, server port)
    halt: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "client thread did not stop"

    def run(self) -> None:
        try:
            conn = connect(self.port, pooled=True, autocommit=False)
        except psycopg.Error as exc:
            self.errors.append(f"connect: {exc}")
            return
        n = 0
        with conn:
            while not self.halt.is_set():
                n += 1
                t0 = time.monotonic()
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO ticks (client, n) VALUES (%s, %s)", (self.client_id, n))
                        port = server_port(conn)
                    self.commits.append((t0, time.monotonic(), port))
                except psycopg.Error as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    if conn.closed:
                        return
                time.sleep(0.005)


# --- tests --------------------------------------------------------------------------------------

def test_ensure_serves_both_uris_over_tls_and_is_idempotent(env: Env) -> None:
    d, p = env.ports[0], env.ports[1]
    t0 = time.monotonic()
    st = env.manager.ensure(env.spec("pg-demo", d, p, env.pg1))
    print(f"\nensure (start HAProxy + PgBouncer): {time.monotonic() - t0:.3f}s")
    assert st.running and not st.paused and st.message is None, st
    assert (st.direct.port, st.pooled.port, st.target) == (d, p, env.pg1.endpoint)
    for port, pooled in ((d, False), (p, True)):
        with connect(port, pooled=pooled) as c:
            assert server_port(c) == env.pg1.port
            assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
            assert c.info.pgconn.ssl_in_use  # client side of this hop is TLS too
    # both processes run as the unprivileged user
    for pid in (st.haproxy_pid, st.pgbouncer_pid):
        assert Path(f"/proc/{pid}").stat().st_uid == (proc.node_user_ids(env.settings) or (os.getuid(),))[0]
    again = env.manager.ensure(env.spec("pg-demo", d, p, env.pg1))
    assert (again.haproxy_pid, again.pgbouncer_pid) == (st.haproxy_pid, st.pgbouncer_pid)
    # a fresh manager (control plane restarted) adopts the running processes
    fresh = EndpointManager(env.settings)
    assert fresh.status("pg-demo") == again


def test_wrong_password_and_tls_less_clients_are_refused(env: Env) -> None:
    d, p = env.ports[0], env.ports[1]
    for port, pooled in ((d, False), (p, True)):
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            connect(port, pooled=pooled, password="wrong").close()
        with pytest.raises(psycopg.OperationalError):
            connect(port, pooled=pooled, sslmode="disable").close()
    # the pooled URI says why; the direct URI drops a first packet that is not an SSLRequest
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        connect(p, pooled=True, sslmode="disable").close()


def test_query_cancel_passes_the_direct_uri(env: Env) -> None:
    """libpq sends CancelRequest in the clear: the TLS-only filter lets it through."""
    with connect(env.ports[0], pooled=False) as c:
        threading.Timer(0.3, c.cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(10)")


def test_planned_switch_pause_repoint_resume_has_no_client_error(env: Env) -> None:
    d, p = env.ports[0], env.ports[1]
    m = env.manager
    m.ensure(env.spec("pg-demo", d, p, env.pg1))
    direct_old = connect(d, pooled=False)
    assert server_port(direct_old) == env.pg1.port
    clients = [Client(port=p, client_id=i) for i in range(6)]
    for c in clients:
        c.start()
    try:
        deadline = time.monotonic() + 10
        while min(len(c.commits) for c in clients) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(len(c.commits) >= 20 for c in clients), [c.errors for c in clients]
        t0 = time.monotonic()
        paused_s = m.pause("pg-demo", timeout=10)
        assert m.status("pg-demo").paused
        repoint_s = m.repoint("pg-demo", env.pg2.endpoint)
        m.resume("pg-demo")
        switch_s = time.monotonic() - t0
        time.sleep(1.0)
    finally:
        for c in clients:
            c.halt.set()
        for c in clients:
            c.join(timeout=15)
    errors = [e for c in clients for e in c.errors]
    assert errors == [], errors
    # every client moved to server 2 without reconnecting
    for c in clients:
        ports = [port for _, _, port in c.commits]
        first2 = ports.index(env.pg2.port)
        assert set(ports[:first2]) == {env.pg1.port} and set(ports[first2:]) == {env.pg2.port}
    # The stall clients saw: the longest transaction that overlapped the switch, and the longest
    # gap between two commits (of any client) around it.
    t1 = t0 + switch_s
    around = [(s, e) for c in clients for s, e, _ in c.commits if e >= t0 and s <= t1]
    stall = max(e - s for s, e in around)
    ends = sorted(e for c in clients for _, e, _ in c.commits if t0 - 1 <= e <= t1 + 1)
    gap = max(b - a for a, b in zip(ends, ends[1:], strict=False))
    elsewhere = max(e - s for c in clients for s, e, _ in c.commits if e < t0 or s > t1)
    print(f"\nplanned switch (pooled): pause {paused_s * 1000:.1f} ms, repoint {repoint_s * 1000:.1f} ms, "
          f"pause->resume {switch_s * 1000:.1f} ms; longest transaction across the switch {stall * 1000:.1f} ms, "
          f"longest gap between commits {gap * 1000:.1f} ms (longest transaction elsewhere "
          f"{elsewhere * 1000:.1f} ms); {sum(len(c.commits) for c in clients)} commits, 0 errors")
    assert stall < 2.0
    # the direct URI: the old session to server 1 was cut, new sessions reach server 2
    with pytest.raises(psycopg.OperationalError):
        server_port(direct_old)
    direct_old.close()
    with connect(d, pooled=False) as c:
        assert server_port(c) == env.pg2.port
    st = m.status("pg-demo")
    assert st.target == env.pg2.endpoint and not st.paused and st.running


def test_pause_timeout_raises_and_leaves_the_pooler_resumed(env: Env) -> None:
    d, p = env.ports[0], env.ports[1]
    m = env.manager
    m.ensure(env.spec("pg-demo", d, p, env.pg2))
    holder = connect(p, pooled=True, autocommit=False)
    holder.execute("SELECT 1")  # a transaction stays open: PAUSE cannot complete
    t0 = time.monotonic()
    with pytest.raises(PauseTimeout, match="did not complete within 1s"):
        m.pause("pg-demo", timeout=1)
    assert time.monotonic() - t0 < 3
    assert not m.status("pg-demo").paused
    with connect(p, pooled=True) as c:  # not held
        assert server_port(c) == env.pg2.port
    holder.rollback()
    holder.close()


def _pause_left_by_a_dead_admin(env: Env, name: str) -> None:
    """What a control plane killed while PAUSE waits leaves behind: PAUSE sent on an admin
    connection that then dies (PgBouncer keeps pausing), and the intent saved."""
    from pgcrdr.endpoint.control import PgBouncerAdmin
    from pgcrdr.endpoint.render import ADMIN_USER

    m = env.manager
    lay = m.layout(name)
    state = m._load(name)
    state["pause_pending"] = True
    m._save(lay, state)
    admin = PgBouncerAdmin(lay.socket_dir, state["spec"]["pooled_port"], ADMIN_USER, state["admin_password"])
    conn = admin.connect()
    conn.pgconn.send_query(b"PAUSE")
    time.sleep(0.3)
    conn.close()


def test_a_pause_left_by_a_dead_control_plane_is_found_and_resumed(env: Env) -> None:
    """A restarted control plane (a new manager) sees the endpoint as possibly paused, RESUME
    frees held clients at once, and a new PAUSE over the old one ("already suspended/paused")
    is taken as ours: resumed and paused again within its deadline."""
    d, p = env.ports[0], env.ports[1]
    env.manager.ensure(env.spec("pg-demo", d, p, env.pg2))
    holder = connect(p, pooled=True, autocommit=False)
    holder.execute("SELECT 1")  # a transaction stays open: the PAUSE waits on it
    _pause_left_by_a_dead_admin(env, "pg-demo")
    restarted = EndpointManager(env.settings)
    assert "pg-demo" in restarted.paused_names()
    done = threading.Event()

    def query() -> None:
        with connect(p, pooled=True) as c:
            c.execute("SELECT 1")
        done.set()
    threading.Thread(target=query, daemon=True).start()
    assert not done.wait(1.0), "a pooled query went through a paused PgBouncer"
    t0 = time.monotonic()
    restarted.resume("pg-demo")
    assert done.wait(5.0) and time.monotonic() - t0 < 2.0, "held clients not freed by RESUME"
    assert restarted.paused_names() == []
    restarted.resume("pg-demo")  # resuming a pooler that is not paused is a success
    # the old PAUSE pending again: a new PAUSE takes it over and keeps to its own deadline
    _pause_left_by_a_dead_admin(env, "pg-demo")
    t0 = time.monotonic()
    with pytest.raises(PauseTimeout):
        restarted.pause("pg-demo", timeout=1.5)
    assert time.monotonic() - t0 < 4
    assert restarted.paused_names() == []
    with connect(p, pooled=True) as c:  # not held
        c.execute("SELECT 1")
    holder.rollback()
    holder.close()
    assert restarted.pause("pg-demo", timeout=5) >= 0  # nothing open: PAUSE completes
    restarted.resume("pg-demo")


def test_no_target_refuses_new_connections_and_cuts_old_ones(env: Env) -> None:
    d, p = env.ports[0], env.ports[1]
    m = env.manager
    m.ensure(env.spec("pg-demo", d, p, env.pg2))
    olds = [connect(d, pooled=False), connect(p, pooled=True)]
    st = m.ensure(env.spec("pg-demo", d, p, None))  # ensure with target None == repoint(None)
    assert st.target is None and "refused" in (st.message or "")
    for c, uri in zip(olds, ("direct", "pooled"), strict=True):
        with pytest.raises(psycopg.OperationalError):
            server_port(c)
            pytest.fail(f"a session opened through the {uri} URI before the repoint to no target still answers")
        c.close()
    with pytest.raises(psycopg.OperationalError):
        connect(d, pooled=False).close()
    with pytest.raises(psycopg.OperationalError, match="disabled|no such database"):
        connect(p, pooled=True).close()
    m.repoint("pg-demo", env.pg1.endpoint)
    for port, pooled in ((d, False), (p, True)):
        with connect(port, pooled=pooled) as c:
            assert server_port(c) == env.pg1.port


def test_a_database_pgbouncer_hid_is_enabled_again_with_the_next_target(env: Env) -> None:
    """PgBouncer moves a ``*`` database left without pools (here: KILLed by the repoint to no
    target) to a hidden idle list after its next maintenance pass, still DISABLEd; SHOW
    DATABASES no longer lists it. The next target must ENABLE it all the same, or every login
    to it fails with "database is disabled" (what happened before the fix)."""
    d, p = env.ports[0], env.ports[1]
    m = env.manager
    m.ensure(env.spec("pg-demo", d, p, env.pg2))
    with connect(p, pooled=True) as c:
        assert server_port(c) == env.pg2.port
        m.ensure(env.spec("pg-demo", d, p, None))
    lay = m.layout("pg-demo")
    admin = m._admin(lay, m._load("pg-demo"))
    deadline = time.monotonic() + 10  # PgBouncer's maintenance runs three times a second
    while "appdb" in {r["name"] for r in admin.command("SHOW DATABASES")}:
        assert time.monotonic() < deadline, "PgBouncer kept the killed database listed"
        time.sleep(0.1)
    # back to the same writer (a move given up, a fence lifted): PgBouncer's RELOAD leaves
    # the hidden database as it was
    m.ensure(env.spec("pg-demo", d, p, env.pg2))
    with connect(p, pooled=True) as c:
        assert server_port(c) == env.pg2.port
    assert "disabled_dbs" not in m._load("pg-demo")


def test_user_changes_take_effect_through_ensure(env: Env) -> None:
    d, p = env.ports[0], env.ports[1]
    for srv in (env.pg1, env.pg2):
        with srv.admin() as c:
            c.execute("CREATE ROLE newbie LOGIN PASSWORD 'newbie-pw'")
    spec = env.spec("pg-demo", d, p, env.pg1)
    before = env.manager.status("pg-demo")
    with pytest.raises(psycopg.OperationalError):
        connect(p, pooled=True, user="newbie", password="newbie-pw").close()
    spec.users.append(DbUser(username="newbie", password="newbie-pw"))
    after = env.manager.ensure(spec)
    assert after.pgbouncer_pid == before.pgbouncer_pid  # RELOAD, not a restart
    with connect(p, pooled=True, user="newbie", password="newbie-pw") as c:
        assert server_port(c) == env.pg1.port


def test_haproxy_runtime_api_repoint_is_faster_than_a_reload(env: Env) -> None:
    """Measures both ways of repointing HAProxy. The runtime API is what EndpointManager uses."""
    from pgcrdr.endpoint.render import render_haproxy_config

    m = env.manager
    lay = m.layout("pg-demo")
    runtime, command_only = [], []
    for target in (env.pg2, env.pg1, env.pg2, env.pg1):
        t0 = time.monotonic()
        m._haproxy_repoint(lay, target.endpoint)
        command_only.append(time.monotonic() - t0)
        with connect(env.ports[0], pooled=False) as c:
            assert server_port(c) == target.port
        runtime.append(time.monotonic() - t0)
    # a reload: HAProxy in master-worker mode, new config, SIGUSR2, poll until new sessions go there
    work = env.root / "reload-bench"
    work.mkdir()
    port = env.ports[9]
    cfg = work / "haproxy.cfg"
    cfg.write_text(render_haproxy_config("bench", "127.0.0.1", port, env.pg1.endpoint, work / "s.sock"))
    log_path = work / "haproxy.log"
    with open(log_path, "wb") as log:
        master = subprocess.Popen(["/usr/sbin/haproxy", "-W", "-db", "-f", str(cfg)], stdout=log, stderr=log,
                                  start_new_session=True)
    reload = []

    def master_ready(loads: int) -> None:
        # The master re-executes itself on each reload; a SIGUSR2 that arrives before it is
        # back in its loop is lost (measured: every other back-to-back reload, sometimes even
        # just after it logged "Loading success."). A reload-based repoint would need the same.
        deadline = time.monotonic() + 10
        while log_path.read_text(errors="replace").count("Loading success.") < loads:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.01)
        time.sleep(0.5)

    try:
        master_ready(1)
        old = connect(port, pooled=False)
        for i, target in enumerate((env.pg2, env.pg1, env.pg2)):
            master_ready(i + 1)
            cfg.write_text(render_haproxy_config("bench", "127.0.0.1", port, target.endpoint, work / "s.sock"))
            t0 = time.monotonic()
            master.send_signal(signal.SIGUSR2)
            while True:
                try:
                    with connect(port, pooled=False) as c:
                        if server_port(c) == target.port:
                            break
                except psycopg.OperationalError:
                    pass
                assert time.monotonic() - t0 < 10, f"reload did not take effect: {log_path.read_text()[-2000:]}"
                time.sleep(0.002)
            reload.append(time.monotonic() - t0)
        old_survives = server_port(old) == env.pg1.port  # the old worker keeps serving it
        old.close()
    finally:
        master.terminate()
        try:
            master.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait(timeout=5)
    print(f"\nHAProxy repoint, call to first new session on the new target: runtime API "
          f"{[round(t * 1000, 1) for t in runtime]} ms (the API call alone "
          f"{[round(t * 1000, 1) for t in command_only]} ms), reload (SIGUSR2, master-worker) "
          f"{[round(t * 1000, 1) for t in reload]} ms; after a reload old sessions stay on the old "
          f"server: {old_survives}")
    assert max(runtime) < min(reload)


def test_concurrent_operations_on_one_endpoint_are_serialized(env: Env) -> None:
    m = env.manager
    failures: list[str] = []

    def worker(i: int) -> None:
        try:
            for k in range(15):
                target = (env.pg1, env.pg2)[(i + k) % 2].endpoint
                if i % 2:
                    m.pause("pg-demo", timeout=5)
                    m.repoint("pg-demo", target)
                    m.resume("pg-demo")
                else:
                    m.status("pg-demo")
                    m.ensure(env.spec("pg-demo", env.ports[0], env.ports[1], env.pg1))
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    m.ensure(env.spec("pg-demo", env.ports[0], env.ports[1], env.pg1))
    m.resume("pg-demo")
    st = m.status("pg-demo")
    assert st.target == env.pg1.endpoint and not st.paused and st.running
    for port, pooled in ((env.ports[0], False), (env.ports[1], True)):
        with connect(port, pooled=pooled) as c:
            assert server_port(c) == env.pg1.port


def test_stop_all_endpoints_works_from_pid_files_alone(env: Env) -> None:
    d2, p2 = env.ports[2], env.ports[3]
    EndpointManager(env.settings).ensure(env.spec("pg-other", d2, p2, env.pg2))  # manager object dropped
    pids = [s.haproxy_pid for s in (env.manager.status("pg-demo"), env.manager.status("pg-other"))] + \
           [s.pgbouncer_pid for s in (env.manager.status("pg-demo"), env.manager.status("pg-other"))]
    assert all(alive(pid) for pid in pids)
    stopped = stop_all_endpoints(env.settings)
    assert sorted(stopped) == sorted(pids)  # type: ignore[type-var]
    assert not any(alive(pid) for pid in pids)
    st = env.manager.status("pg-other")
    assert not st.running and "not running" in (st.message or "")
    with pytest.raises(EndpointError, match="not running"):
        env.manager.pause("pg-other", 1)
    # ensure starts them again from the kept state; the manager's kept admin connection to the
    # old PgBouncer is replaced
    st = env.manager.ensure(env.spec("pg-other", d2, p2, env.pg2))
    assert st.running
    with connect(p2, pooled=True) as c:
        assert server_port(c) == env.pg2.port
    env.manager.ensure(env.spec("pg-demo", env.ports[0], env.ports[1], env.pg1))
    env.manager.pause("pg-demo", 5)
    env.manager.resume("pg-demo")


def test_remove_leaves_no_process_and_no_file(env: Env) -> None:
    m = env.manager
    for name in ("pg-other", "pg-demo"):
        st = m.status(name)
        pids = [st.haproxy_pid, st.pgbouncer_pid]
        stopped = m.remove(name)
        assert sorted(stopped) == sorted(p for p in pids if p)
        assert not any(alive(pid) for pid in pids)
        assert not m.layout(name).dir.exists()
        with pytest.raises(EndpointError, match="not found"):
            m.status(name)
    assert proc.processes_under(env.settings.home) == []
    assert m.names() == []


def test_a_failed_start_says_why_and_can_be_removed(env: Env) -> None:
    """The direct port is taken: ensure fails naming HAProxy's complaint; nothing keeps running."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", env.ports[4]))
    busy.listen(1)
    try:
        with pytest.raises(EndpointError, match="HAProxy exited at once: .*cannot bind"):
            env.manager.ensure(env.spec("pg-broken", env.ports[4], env.ports[5], env.pg1))
    finally:
        busy.close()
    assert env.manager.status("pg-broken").running is False
    env.manager.remove("pg-broken")
    assert proc.processes_under(env.settings.home) == []
