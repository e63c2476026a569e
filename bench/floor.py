"""The floor of a planned move: the safe sequence done by hand on plain PostgreSQL.

Two PostgreSQL 15 instances (a writer and a streaming standby, TLS and SCRAM like a pgcrdr node)
behind one PgBouncer configured exactly as pgcrdr's pooled Service URI (``render_pgbouncer_ini``).
No Patroni, no etcd, no agents, no control plane. A move from X to Y is the sequence of
docs/architecture.md, "The safe sequences":

    CHECKPOINT on X · PAUSE · fast shutdown of X (until its postmaster.pid is gone) ·
    Y's received LSN past X's shutdown checkpoint · pg_promote(wait => false), poll
    pg_is_in_recovery() · new [databases] target + RELOAD · RESUME · X restarts as a standby of Y

``bench/transitions.py`` runs it in the same process as the platform's moves, under the same
pgbench load and acknowledged-write logger, and divides the platform's pauses by this one.

Everything runs as the node user (``PGCRDR_OS_USER``) through ``pgcrdr.processes`` when we are
root, listens on 127.0.0.1, and ``FloorPair.stop()`` (also from ``with``) stops every process it
started by PID, whatever failed before.

    .venv/bin/python bench/floor.py [--runs 3]     # the floor alone
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgcrdr import processes as proc  # noqa: E402
from pgcrdr.agent.wal import controldata  # noqa: E402
from pgcrdr.agentapi.lsn import parse_lsn  # noqa: E402
from pgcrdr.agentapi.models import DbUser, Endpoint  # noqa: E402
from pgcrdr.config import Settings  # noqa: E402
from pgcrdr.endpoint.control import PgBouncerAdmin  # noqa: E402
from pgcrdr.endpoint.render import ADMIN_USER, pgbouncer_argv, render_pgbouncer_ini, render_userlist  # noqa: E402
from pgcrdr.security.tls import issue_server_cert, make_ca  # noqa: E402
from tests.helpers import Writer, port_free  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"
USER = "bench"  # the client's login (superuser: also used for replication and the admin queries)
POLL_S = 0.005  # how often a wait looks again (shutdown, received LSN, end of recovery)
MOVE_TIMEOUT_S = 30.0


def free_ports(start: int, n: int) -> list[int]:
    """``n`` free ports on 127.0.0.1 from ``start`` up (below the ephemeral range)."""
    out = []
    for port in range(start, 32000):
        if port_free(port):
            out.append(port)
            if len(out) == n:
                return out
    raise RuntimeError(f"no {n} free ports from {start}")


@dataclass
class Instance:
    name: str
    port: int
    data: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return proc.postmaster_pid(self.data) or (self.popen.pid if self.popen and self.popen.poll() is None else None)


@dataclass
class MoveTimes:
    """One move: seconds each step took, and when the pooler was paused and resumed."""
    steps: dict[str, float] = field(default_factory=dict)
    paused_at: float = 0.0
    resumed_at: float = 0.0

    @property
    def held_s(self) -> float:
        return self.resumed_at - self.paused_at


class FloorPair:
    """Writer + standby + PgBouncer, started by ``start()``, every process stopped by ``stop()``."""

    def __init__(self, port_start: int, settings: Settings | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="pgcrdr-floor-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.settings = settings or Settings.from_env(home=self.dir)
        self.password = secrets.token_hex(16)
        self.admin_password = secrets.token_hex(16)
        pa, pb, self.bouncer_port = free_ports(port_start, 3)
        self.a = Instance("a", pa, self.dir / "a", self.dir / "a.log")
        self.b = Instance("b", pb, self.dir / "b", self.dir / "b.log")
        self.writer, self.standby = self.a, self.b
        self.sock = self.dir / "sock"
        self.bouncer_dir = self.dir / "bouncer"
        self.bouncer_ini = self.bouncer_dir / "pgbouncer.ini"
        self.bouncer: subprocess.Popen[bytes] | None = None
        self.admin: PgBouncerAdmin | None = None

    # --- set-up -------------------------------------------------------------------------------

    def __enter__(self) -> FloorPair:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """A command as the node user; raises with its output when it fails."""
        ids = proc.node_user_ids(self.settings)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=str(self.dir),
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                                "HOME": str(self.dir), "PGPASSFILE": str(self.dir / "pgpass")},
                           user=ids[0] if ids else None, group=ids[1] if ids else None,
                           extra_groups=[] if ids else None)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        proc.write_node_file(self.settings, path, text, mode)

    def start(self) -> None:
        s = self.settings
        proc.make_node_dir(s, self.dir, 0o755)
        proc.make_node_dir(s, self.sock, 0o700)
        proc.make_node_dir(s, self.bouncer_dir, 0o700)
        ca = make_ca("pgcrdr floor CA")
        cert = issue_server_cert(ca, [HOST, "localhost"])
        tls = {"ca": self.dir / "ca.crt", "crt": self.dir / "server.crt", "key": self.dir / "server.key"}
        self._write(tls["ca"], ca.cert_pem)
        self._write(tls["crt"], cert.cert_pem)
        self._write(tls["key"], cert.key_pem)
        pwfile = self.dir / "pwfile"
        self._write(pwfile, self.password + "\n")
        self._write(self.dir / "pgpass", f"*:*:*:{USER}:{self.password}\n")

        self._run([str(PG_BIN / "initdb"), "-D", str(self.a.data), "-U", USER, f"--pwfile={pwfile}",
                   "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--data-checksums", "-E", "UTF8"])
        # The settings a pgcrdr node gets from its agent (pgcrdr/agent/patroni.py) that matter
        # for a move; ports and the upstream are per instance, on the command line (start()).
        conf = "\n".join([
            "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.sock}'",
            "wal_level = replica", "hot_standby = on", "max_wal_senders = 10",
            "max_replication_slots = 10", "wal_log_hints = on", "max_connections = 100",
            "synchronous_commit = on", "password_encryption = 'scram-sha-256'",
            "ssl = on", f"ssl_cert_file = '{tls['crt']}'", f"ssl_key_file = '{tls['key']}'",
            f"ssl_ca_file = '{tls['ca']}'", "wal_keep_size = '64MB'", "",
        ])
        self._write(self.a.data / "postgresql.conf",
                    (self.a.data / "postgresql.conf").read_text() + "\n# pgcrdr floor\n" + conf)
        self._write(self.a.data / "pg_hba.conf", "\n".join([
            "local all all scram-sha-256",
            f"hostssl all all {HOST}/32 scram-sha-256",
            f"hostssl replication all {HOST}/32 scram-sha-256",
            "hostnossl all all 0.0.0.0/0 reject", ""]))
        self._start_pg(self.a, standby_of=None)
        with self.connect(self.a) as c:
            c.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
        self._run([str(PG_BIN / "pgbench"), "-i", "-s", "5", "-q", self.direct_uri(self.a)])
        self._run([str(PG_BIN / "pg_basebackup"), "-D", str(self.b.data), "-X", "stream", "--checkpoint=fast",
                   "-d", f"host={HOST} port={self.a.port} user={USER} sslmode=require"])
        self._start_pg(self.b, standby_of=self.a)
        self._wait_streaming(self.a, self.b)

        self._write(self.bouncer_dir / "userlist.txt",
                    render_userlist([DbUser(username=USER, password=self.password)], self.admin_password))
        self._write_bouncer_ini(self.a)
        self.bouncer = proc.spawn(s, pgbouncer_argv(self.bouncer_ini), pid_file=self.bouncer_dir / "pgbouncer.pid",
                                  log_file=self.bouncer_dir / "pgbouncer.log", cwd=self.bouncer_dir)
        self.admin = PgBouncerAdmin(self.sock, self.bouncer_port, ADMIN_USER, self.admin_password)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.admin.command("SHOW VERSION")
                break
            except (psycopg.Error, OSError):
                if self.bouncer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PgBouncer did not start: "
                                       + (self.bouncer_dir / "pgbouncer.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def _write_bouncer_ini(self, target: Instance) -> None:
        self._write(self.bouncer_ini, render_pgbouncer_ini(
            "floor", HOST, self.bouncer_port, Endpoint(host=HOST, port=target.port),
            userlist=self.bouncer_dir / "userlist.txt", socket_dir=self.sock, server_crt=self.dir / "server.crt",
            server_key=self.dir / "server.key", ca_crt=self.dir / "ca.crt"))

    def _start_pg(self, inst: Instance, standby_of: Instance | None) -> None:
        argv = [str(PG_BIN / "postgres"), "-D", str(inst.data), "-p", str(inst.port)]
        if standby_of is not None:
            self._write(inst.data / "standby.signal", "")
            argv += ["-c", f"primary_conninfo=host={HOST} port={standby_of.port} user={USER} sslmode=require "
                           f"passfile={self.dir / 'pgpass'} application_name={inst.name}"]
        inst.popen = proc.spawn(self.settings, argv, pid_file=self.dir / f"{inst.name}.pid", log_file=inst.log,
                                cwd=self.dir)
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.connect(inst, connect_timeout=2):
                    return
            except psycopg.Error:
                if inst.popen.poll() is not None or time.monotonic() > deadline:
                    tail = inst.log.read_text()[-2000:]
                    raise RuntimeError(f"PostgreSQL {inst.name} did not start: {tail}") from None
                time.sleep(0.05)

    def _wait_streaming(self, writer: Instance, standby: Instance, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.connect(writer) as c:
            while True:
                row = c.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s "
                                "AND state = 'streaming'", (standby.name,)).fetchone()
                if row and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{standby.name} is not streaming from {writer.name} after {timeout:g} s")
                time.sleep(0.05)

    # --- connections --------------------------------------------------------------------------

    def direct_uri(self, inst: Instance) -> str:
        return f"postgresql://{USER}:{self.password}@{HOST}:{inst.port}/postgres?sslmode=require"

    @property
    def pooled_uri(self) -> str:
        return f"postgresql://{USER}:{self.password}@{HOST}:{self.bouncer_port}/postgres?sslmode=require"

    def connect(self, inst: Instance, connect_timeout: int = 5) -> psycopg.Connection:
        return psycopg.connect(self.direct_uri(inst), autocommit=True, connect_timeout=connect_timeout)

    # --- the move -----------------------------------------------------------------------------

    def move(self) -> MoveTimes:
        """Planned move of the writer to the standby (the safe sequence); the roles swap."""
        assert self.admin is not None
        x, y = self.writer, self.standby
        t = MoveTimes()
        deadline = time.monotonic() + MOVE_TIMEOUT_S

        def mark(step: str, since: float) -> float:
            now = time.monotonic()
            t.steps[step] = now - since
            return now

        with self.connect(y) as yc:
            t0 = time.monotonic()
            with self.connect(x) as xc:
                xc.execute("CHECKPOINT")  # before the PAUSE, as pgcrdr does (halves the shutdown)
            t0 = mark("checkpoint", t0)
            t.paused_at = t0
            self.admin.pause(MOVE_TIMEOUT_S)
            t0 = mark("pause", t0)
            pm = x.pid
            assert pm is not None, f"{x.name} has no postmaster"
            proc.signal_pid(pm, signal.SIGINT)  # fast shutdown: every WAL record reaches y first
            while (x.data / "postmaster.pid").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{x.name} still running {MOVE_TIMEOUT_S:g} s after SIGINT")
                time.sleep(POLL_S)
            if x.popen is not None:
                x.popen.wait(timeout=5)
            t0 = mark("shutdown", t0)
            cd = controldata(PG_BIN, x.data)
            if cd.state != "shut down":
                raise RuntimeError(f"{x.name} did not shut down cleanly: {cd.state}")
            final = parse_lsn(cd.checkpoint_lsn)
            while True:  # the shutdown checkpoint record itself has arrived (strictly past its start)
                row = yc.execute("SELECT pg_last_wal_receive_lsn()::text").fetchone()
                recv = row[0] if row else None
                if recv and parse_lsn(recv) > final:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{y.name} received {recv}, never past {cd.checkpoint_lsn}: not promoted")
                time.sleep(POLL_S)
            t0 = mark("confirm_lsn", t0)
            yc.execute("SELECT pg_promote(wait => false)")  # wait => true would poll every 100 ms
            while yc.execute("SELECT pg_is_in_recovery()").fetchone() != (False,):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{y.name} still in recovery after pg_promote")
                time.sleep(POLL_S)
            t0 = mark("promote", t0)
        self._write_bouncer_ini(y)
        self.admin.command("RELOAD")
        t0 = mark("repoint", t0)
        self.admin.command("RESUME")
        t.resumed_at = mark("resume", t0)
        self.writer, self.standby = y, x
        t1 = time.monotonic()
        self._start_pg(x, standby_of=y)  # no pg_rewind after a clean shutdown
        self._wait_streaming(y, x)
        t.steps["old writer streaming again"] = time.monotonic() - t1
        return t

    # --- tear-down ----------------------------------------------------------------------------

    def stop(self) -> list[int]:
        """Stop every process this pair started (by PID), then remove its directory."""
        stopped = []
        if self.admin is not None:
            try:
                self.admin.command("RESUME")
            except Exception:  # noqa: BLE001 - not paused, or PgBouncer gone: nothing to resume
                pass
            self.admin.close()
        if self.bouncer is not None and self.bouncer.poll() is None:
            proc.signal_pid(self.bouncer.pid, signal.SIGTERM)  # immediate shutdown (SIGINT waits for clients)
            if proc.wait_gone([self.bouncer.pid], 5):
                proc.signal_pid(self.bouncer.pid, signal.SIGKILL)
            self.bouncer.wait(timeout=10)
            stopped.append(self.bouncer.pid)
        for inst in (self.a, self.b):
            stopped += proc.stop_postmaster(inst.data, timeout=10)
            if inst.popen is not None and inst.popen.poll() is None:
                proc.signal_pid(inst.popen.pid, signal.SIGKILL)
                stopped.append(inst.popen.pid)
            if inst.popen is not None:
                try:
                    inst.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        left = [p for p in proc.processes_under(self.dir) if proc.is_running(p)]
        for pid in left:  # anything that escaped (e.g. a postmaster whose Popen we lost)
            proc.signal_pid(pid, signal.SIGKILL)
        stopped += left
        shutil.rmtree(self.dir, ignore_errors=True)
        return stopped


class Load:
    """pgbench -c4 -j2 through a URI while the ``with`` block runs (the same load as the
    platform's moves get)."""

    def __init__(self, uri: str, clients: int = 4):
        self.argv = ["pgbench", "-c", str(clients), "-j", "2", "-T", "3600", "-M", "simple", "-n", uri]
        self.p: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Load:
        self.p = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def gap_around(times: list[float], t0: float, t1: float) -> float:
    """Longest gap between acknowledged writes that overlaps [t0, t1]."""
    ts = sorted(times)
    return max((b - a for a, b in zip(ts, ts[1:], strict=False) if b >= t0 and a <= t1), default=0.0)


def measure_floor(pair: FloorPair, writer: Writer, moves: int, warmup: float = 2.0, settle: float = 1.0,
                  report: bool = True) -> dict[str, list[float]]:
    """``moves`` planned moves under pgbench through the pair's PgBouncer; per move the pooled
    pause seen by ``writer`` (which must write through ``pair.pooled_uri``) and each step."""
    out: dict[str, list[float]] = {}
    with Load(pair.pooled_uri):
        time.sleep(warmup)
        for _ in range(moves):
            errs = len(writer.log.failed) + len(writer.log.unknown)
            t0 = time.monotonic()
            mt = pair.move()
            t1 = time.monotonic()
            time.sleep(settle)
            gap = gap_around(writer.log.ok_times, t0, t1)
            out.setdefault("pause pooled (s)", []).append(gap)
            out.setdefault("held (PAUSE..RESUME) (s)", []).append(mt.held_s)
            out.setdefault("errors pooled", []).append(len(writer.log.failed) + len(writer.log.unknown) - errs)
            for k, v in mt.steps.items():
                out.setdefault(f"step {k} (s)", []).append(v)
            if report:
                print(f"  floor {pair.standby.name}->{pair.writer.name}: pooled gap {gap:.3f}s, held "
                      f"{mt.held_s:.3f}s, steps " + " ".join(f"{k}={v * 1000:.0f}ms" for k, v in mt.steps.items()),
                      file=sys.stderr)
    return out


def lost_writes(pair: FloorPair, writer: Writer) -> int:
    with pair.connect(pair.writer) as c:
        stored = {r[0] for r in c.execute("SELECT id FROM acked_writes")}
    return len(set(writer.log.ok) - stored)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="moves (each run moves the writer there and back)")
    ap.add_argument("--port-start", type=int, default=10900)
    args = ap.parse_args()
    with FloorPair(args.port_start) as pair:
        w = Writer(pair.pooled_uri, interval=0.005, prepare_threshold=None)
        w.start()
        try:
            rows = measure_floor(pair, w, 2 * args.runs)
        finally:
            w.stop()
        lost = lost_writes(pair, w)
    print(f"{'floor measure':<36}{'median':>10}{'min':>10}{'max':>10}{'n':>5}")
    for m, vals in rows.items():
        print(f"{m:<36}{statistics.median(vals):>10.3f}{min(vals):>10.3f}{max(vals):>10.3f}{len(vals):>5}")
    print(f"{'acknowledged writes lost':<36}{lost:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
