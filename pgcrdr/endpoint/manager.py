"""The control plane's Service URI endpoints: one HAProxy (direct URI) and one PgBouncer
(pooled URI) per CRDR pair, forwarding to the active service's regional primary endpoint.

Processes run as the unprivileged node user (PgBouncer refuses root) through the region agent's
spawn helpers, with pid files under ``<home>/endpoints/<name>/``: everything can be stopped by
PID from files alone (``stop_all_endpoints``), and a new manager adopts running processes.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from pgcrdr import processes as proc
from pgcrdr.agentapi.models import Endpoint
from pgcrdr.config import Settings
from pgcrdr.endpoint.control import PgBouncerAdmin, resolve_ip
from pgcrdr.haproxy import haproxy_command, server_sessions
from pgcrdr.endpoint.models import EndpointError, EndpointSpec, EndpointStatus, PauseTimeout
from pgcrdr.endpoint.render import (
    ADMIN_USER,
    HAPROXY_BACKEND,
    HAPROXY_SERVER,
    EndpointLayout,
    endpoints_dir,
    haproxy_argv,
    haproxy_static_part,
    pgbouncer_argv,
    render_haproxy_config,
    render_pgbouncer_ini,
    render_userlist,
)
from pgcrdr.security.files import write_secret
from pgcrdr.security.tokens import new_token

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# With no target, how long a repoint waits for HAProxy to have shut every session to the old one.
SESSION_CUT_WAIT_S = 2.0
_SERVER = f"{HAPROXY_BACKEND}/{HAPROXY_SERVER}"  # the endpoint's one server, in runtime API commands


def _last_lines(path: Path, n: int = 5) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def _stop_pid(pid: int | None, marker: str, sig: int = signal.SIGTERM) -> list[int]:
    """Stop ``pid`` if it is still ours (its command line names ``marker``); SIGKILL if it
    overstays. Returns the pids signalled."""
    if not proc.pid_matches(pid, marker):
        return []
    assert pid is not None
    proc.signal_pid(pid, sig)
    if proc.wait_gone([pid], STOP_TIMEOUT_S):
        log.warning("pid %s (%s) ignored signal %s; SIGKILL", pid, marker, sig)
        proc.signal_pid(pid, signal.SIGKILL)
        proc.wait_gone([pid], STOP_TIMEOUT_S)
    return [pid]


def _stop_layout_processes(layout: EndpointLayout) -> list[int]:
    marker = str(layout.dir)
    pids = []
    for pid_file in (layout.pgbouncer_pid, layout.haproxy_pid):
        pids += _stop_pid(proc.read_pid(pid_file), marker)
        pid_file.unlink(missing_ok=True)
    if layout.dir.is_dir():  # anything else still naming the directory (a pid file lost)
        for pid in proc.processes_under(layout.dir):
            pids += _stop_pid(pid, marker)
    return pids


def _ident(name: str) -> str:
    """A database name as an admin-console identifier."""
    return '"' + name.replace('"', '""') + '"'


def _pgbouncer_db_names(admin: PgBouncerAdmin) -> set[str]:
    """Every database name PgBouncer serves or holds clients of: SHOW DATABASES misses the
    ``*`` databases it has moved to its idle list (see ``_pgbouncer_reload``), so the names
    of the pools and of the clients are added. The admin console's own is left out."""
    names = {r["name"] or "" for r in admin.command("SHOW DATABASES")}
    names |= {r["database"] or "" for r in admin.command("SHOW POOLS")}
    names |= {r["database"] or "" for r in admin.command("SHOW CLIENTS")}
    return names - {"", "pgbouncer"}


def _known_db(admin: PgBouncerAdmin, command: str) -> bool:
    """Run an admin command naming one database; False when PgBouncer no longer knows that
    database (it dropped an idle ``*`` database, or none was ever created under that name)."""
    try:
        admin.command(command)
    except EndpointError as exc:
        if "no such database" in str(exc):
            return False
        raise
    return True


def _cut_db(admin: PgBouncerAdmin, name: str) -> None:
    """DISABLE (new logins refused), KILL (its clients and server connections closed), RESUME
    (a KILLed database waits for RESUME; DISABLE still refuses). Nothing to do for a database
    PgBouncer no longer knows."""
    db = _ident(name)
    if _known_db(admin, f"DISABLE {db}"):
        admin.command(f"KILL {db}")
        admin.command(f"RESUME {db}")


def _wait_clients_cut(admin: PgBouncerAdmin) -> None:
    """With no target, return once PgBouncer holds no client of a served database: KILL closes
    them at once, this proves it (and cuts again whatever a hidden database still held).
    Bounded by SESSION_CUT_WAIT_S."""
    deadline = time.monotonic() + SESSION_CUT_WAIT_S
    while True:
        left = sorted({r["database"] or "" for r in admin.command("SHOW CLIENTS")} - {"", "pgbouncer"})
        if not left:
            return
        if time.monotonic() >= deadline:
            raise EndpointError(f"PgBouncer still holds clients of {', '.join(left)} "
                                f"{SESSION_CUT_WAIT_S:.0f} s after they were killed")
        for name in left:
            _cut_db(admin, name)
        time.sleep(0.01)


def stop_all_endpoints(settings: Settings) -> list[int]:
    """Stop every endpoint process under ``settings.home`` by PID, from files alone (usable
    after a crash, with no manager object). Files stay: a later ``ensure`` starts them again.
    Returns the pids signalled."""
    root = endpoints_dir(settings.home)
    pids: list[int] = []
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            pids += _stop_layout_processes(EndpointLayout(d))
    if pids:
        log.info("stopped endpoint processes %s", pids)
    return pids


class EndpointManager:
    """Starts, repoints, pauses and removes Service URI endpoints. Thread-safe: operations on
    one endpoint are serialized, different endpoints proceed in parallel."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = endpoints_dir(settings.home)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}
        self._popens: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._admins: dict[str, tuple[tuple[Any, ...], PgBouncerAdmin]] = {}

    # -- helpers -------------------------------------------------------------------------------

    def _lock(self, name: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(name, threading.RLock())

    def layout(self, name: str) -> EndpointLayout:
        return EndpointLayout(self.root / name)

    def _load(self, name: str) -> dict[str, Any]:
        lay = self.layout(name)
        try:
            return json.loads(lay.state.read_text())
        except FileNotFoundError:
            raise EndpointError(f"endpoint {name} not found") from None

    def _save(self, lay: EndpointLayout, state: dict[str, Any]) -> None:
        # holds the admin password: created 0600, fsynced, renamed into place
        write_secret(lay.state, json.dumps(state, indent=1))

    def _admin(self, lay: EndpointLayout, state: dict[str, Any]) -> PgBouncerAdmin:
        """The kept admin connection of this endpoint's PgBouncer (per PgBouncer process)."""
        key = (proc.read_pid(lay.pgbouncer_pid), state["spec"]["pooled_port"], state["admin_password"])
        cached = self._admins.get(lay.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            cached[1].close()
        admin = PgBouncerAdmin(lay.socket_dir, state["spec"]["pooled_port"], ADMIN_USER, state["admin_password"])
        self._admins[lay.name] = (key, admin)
        return admin

    def _drop_admin(self, name: str) -> None:
        cached = self._admins.pop(name, None)
        if cached is not None:
            cached[1].close()

    def _pid(self, pid_file: Path, lay: EndpointLayout) -> int | None:
        pid = proc.read_pid(pid_file)
        return pid if proc.pid_matches(pid, str(lay.dir)) else None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if (d / "state.json").exists())

    # -- rendering -----------------------------------------------------------------------------

    def _haproxy_cfg(self, lay: EndpointLayout, spec: EndpointSpec) -> str:
        return render_haproxy_config(spec.name, self.settings.host, spec.direct_port, spec.target, lay.haproxy_sock)

    def _pgbouncer_ini(self, lay: EndpointLayout, spec: EndpointSpec) -> str:
        return render_pgbouncer_ini(spec.name, self.settings.host, spec.pooled_port, spec.target,
                                    userlist=lay.userlist, socket_dir=lay.socket_dir, server_crt=lay.server_crt,
                                    server_key=lay.server_key, ca_crt=lay.ca_crt)

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, lay: EndpointLayout, argv: list[str], pid_file: Path, log_file: Path) -> int:
        popen = proc.spawn(self.settings, argv, pid_file=pid_file, log_file=log_file, cwd=lay.dir)
        self._popens.setdefault(lay.name, []).append(popen)
        return popen.pid

    def _wait_started(self, what: str, pid: int, log_file: Path, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` holds; a process that never gets there is stopped."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not proc.is_running(pid):
                raise EndpointError(f"{what} exited at once: {_last_lines(log_file)}")
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            if time.monotonic() > deadline:
                _stop_pid(pid, str(log_file.parent))
                raise EndpointError(f"{what} did not come up within {START_TIMEOUT_S:g}s: {_last_lines(log_file)}")
            time.sleep(0.05)

    def _start_haproxy(self, lay: EndpointLayout) -> None:
        pid = self._spawn(lay, haproxy_argv(lay.haproxy_cfg), lay.haproxy_pid, lay.haproxy_log)
        self._wait_started("HAProxy", pid, lay.haproxy_log,
                           lambda: "Name: HAProxy" in haproxy_command(lay.haproxy_sock, "show info", 1))

    def _start_pgbouncer(self, lay: EndpointLayout, state: dict[str, Any]) -> None:
        pid = self._spawn(lay, pgbouncer_argv(lay.pgbouncer_ini), lay.pgbouncer_pid, lay.pgbouncer_log)
        admin = self._admin(lay, state)
        self._wait_started("PgBouncer", pid, lay.pgbouncer_log, lambda: admin.command("SHOW VERSION") is not None)

    def _stop(self, lay: EndpointLayout, which: str) -> list[int]:
        pid_file = lay.haproxy_pid if which == "haproxy" else lay.pgbouncer_pid
        if which == "pgbouncer":
            self._drop_admin(lay.name)
        pids = _stop_pid(proc.read_pid(pid_file), str(lay.dir))
        pid_file.unlink(missing_ok=True)
        return pids

    def _haproxy_repoint(self, lay: EndpointLayout, target: Endpoint | None) -> None:
        if target is None:
            cmds = [f"set server {_SERVER} state maint", f"shutdown sessions server {_SERVER}"]
        else:
            ip = resolve_ip(target.host)
            # New connections go to the new address at once; then every session still open to
            # the old target is cut (the window between the two is one event-loop pass).
            cmds = [f"set server {_SERVER} addr {ip} port {target.port}", f"set server {_SERVER} state ready",
                    f"shutdown sessions server {_SERVER}"]
        out = haproxy_command(lay.haproxy_sock, ";".join(cmds))
        bad = [ln for ln in out.splitlines()
               if ln.strip() and "changed from" not in ln and "no need to change" not in ln]
        if bad:
            raise EndpointError(f"HAProxy runtime API refused the repoint: {' | '.join(bad)}")
        if target is None:
            self._wait_sessions_cut(lay)

    def _wait_sessions_cut(self, lay: EndpointLayout) -> None:
        """With no target, return once HAProxy holds no session to the old one: ``shutdown
        sessions`` is carried out by HAProxy's next event-loop pass, so a client's query sent
        right after the command could still reach the old target (seen once in the suite under
        load). The server is in maintenance, so no new session can start meanwhile. Bounded by
        SESSION_CUT_WAIT_S; the shutdown is asked again every 100 ms."""
        deadline = time.monotonic() + SESSION_CUT_WAIT_S
        asked = time.monotonic()
        while True:
            left = server_sessions(haproxy_command(lay.haproxy_sock, "show stat", 1.0), HAPROXY_BACKEND,
                                   HAPROXY_SERVER)
            if not left:  # 0, or a stats output without the server (nothing to wait for)
                return
            if time.monotonic() >= deadline:
                raise EndpointError(f"HAProxy still holds {left} session(s) to the old target "
                                    f"{SESSION_CUT_WAIT_S:.0f} s after they were shut")
            if time.monotonic() - asked >= 0.1:
                haproxy_command(lay.haproxy_sock, f"shutdown sessions server {_SERVER}")
                asked = time.monotonic()
            time.sleep(0.005)

    # -- API -----------------------------------------------------------------------------------

    def ensure(self, spec: EndpointSpec) -> EndpointStatus:
        """Start or reconfigure the endpoint so it matches ``spec``. Idempotent. A changed
        target only repoints (no restart, see ``repoint``); changed users or TLS material reload
        PgBouncer; changed ports restart the process concerned. Does not change the paused state."""
        s = self.settings
        with self._lock(spec.name):
            lay = self.layout(spec.name)
            proc.make_node_dir(s, lay.dir, 0o700)
            proc.make_node_dir(s, lay.tls_dir, 0o700)
            proc.make_node_dir(s, lay.socket_dir, 0o700)
            try:
                state = json.loads(lay.state.read_text())
            except (FileNotFoundError, ValueError):
                state = {"admin_password": new_token(24), "paused": False}
            old_spec = EndpointSpec.model_validate(state["spec"]) if "spec" in state else None
            state["spec"] = spec.model_dump()
            self._save(lay, state)  # first: a failed start still leaves an endpoint remove() can clean
            tls_changed = any([
                proc.write_node_file(s, lay.server_crt, spec.tls.cert_pem, 0o644),
                proc.write_node_file(s, lay.server_key, spec.tls.key_pem, 0o600),
                proc.write_node_file(s, lay.ca_crt, spec.tls.ca_cert_pem, 0o644),
            ])
            users_changed = proc.write_node_file(s, lay.userlist,
                                                 render_userlist(spec.users, state["admin_password"]), 0o600)

            # HAProxy
            cfg = self._haproxy_cfg(lay, spec)
            try:
                old_cfg = lay.haproxy_cfg.read_text()
            except OSError:
                old_cfg = ""
            proc.write_node_file(s, lay.haproxy_cfg, cfg, 0o600)
            hpid = self._pid(lay.haproxy_pid, lay)
            if hpid and haproxy_static_part(cfg) != haproxy_static_part(old_cfg):
                self._stop(lay, "haproxy")
                hpid = None
            if hpid is None:
                self._start_haproxy(lay)
            elif cfg != old_cfg:
                self._haproxy_repoint(lay, spec.target)

            # PgBouncer
            ini = self._pgbouncer_ini(lay, spec)
            ini_changed = proc.write_node_file(s, lay.pgbouncer_ini, ini, 0o600)
            bpid = self._pid(lay.pgbouncer_pid, lay)
            if bpid and old_spec is not None and old_spec.pooled_port != spec.pooled_port:
                self._stop(lay, "pgbouncer")  # listen_port needs a restart
                bpid = None
            if bpid is None:
                self._start_pgbouncer(lay, state)
                if state.get("paused"):
                    self._admin(lay, state).command("PAUSE")  # PgBouncer died while paused: hold again
                state["pause_pending"] = False  # a new PgBouncer holds no earlier PAUSE
                self._save(lay, state)
            elif ini_changed or users_changed or tls_changed:
                target_changed = old_spec is None or old_spec.target != spec.target
                self._pgbouncer_reload(lay, state, target_changed)
            return self._status(spec.name)

    def repoint(self, name: str, target: Endpoint | None) -> float:
        """Point both URIs at ``target`` (None: refuse new connections). HAProxy: runtime API,
        new connections go to the target and every session to the old one is cut. PgBouncer:
        new ``[databases]`` + RELOAD; server connections to the old target are closed as they
        are released. Done between ``pause`` and ``resume``, clients see no error. Returns
        seconds taken."""
        t0 = time.monotonic()
        with self._lock(name):
            lay = self.layout(name)
            state = self._load(name)
            spec = EndpointSpec.model_validate({**state["spec"], "target": target.model_dump() if target else None})
            state["spec"] = spec.model_dump()
            proc.write_node_file(self.settings, lay.haproxy_cfg, self._haproxy_cfg(lay, spec), 0o600)
            proc.write_node_file(self.settings, lay.pgbouncer_ini, self._pgbouncer_ini(lay, spec), 0o600)
            self._save(lay, state)
            errors = []
            if self._pid(lay.haproxy_pid, lay):
                try:
                    self._haproxy_repoint(lay, target)
                except (OSError, EndpointError) as exc:
                    errors.append(f"HAProxy: {exc}")
            else:
                errors.append("HAProxy is not running (ensure() starts it with the new target)")
            if self._pid(lay.pgbouncer_pid, lay):
                try:
                    self._pgbouncer_reload(lay, state, target_changed=True)
                except Exception as exc:
                    errors.append(f"PgBouncer: {exc}")
            else:
                errors.append("PgBouncer is not running (ensure() starts it with the new target)")
            if errors:
                raise EndpointError(f"repoint of {name} incomplete: " + "; ".join(errors))
        return time.monotonic() - t0

    def _pgbouncer_reload(self, lay: EndpointLayout, state: dict[str, Any], target_changed: bool) -> None:
        """RELOAD (new ini, auth file, TLS files). PgBouncer updates the databases it already
        created from ``*`` when ``*`` changes, but keeps them when ``*`` is removed: so with no
        target each of them is DISABLEd (new logins refused) and KILLed (sessions to the old
        target cut); with a target they are ENABLEd again.

        SHOW DATABASES does not list them all: PgBouncer moves a ``*`` database that had no
        pool at its last maintenance pass (~1/3 s) to a hidden idle list, still DISABLEd, and
        brings it back when a client names it. Seen here (PgBouncer 1.18): a killed database
        went hidden, the next target's ENABLE missed it and logins failed with "database is
        disabled"; and a database with a client logged in was hidden, so that client was not
        cut. The names are therefore also taken from the pools and the clients, and the names
        disabled are kept in the endpoint's state (``disabled_dbs``) until ENABLEd; ENABLE,
        DISABLE and KILL by name find a hidden database."""
        admin = self._admin(lay, state)
        admin.command("RELOAD")
        if not target_changed:
            return
        remembered = set(state.get("disabled_dbs") or [])
        if state["spec"]["target"] is None:
            names = remembered | _pgbouncer_db_names(admin)
            state["disabled_dbs"] = sorted(names)
            self._save(lay, state)  # first: a crash from here on still ENABLEs them later
            for name in sorted(names):
                _cut_db(admin, name)
            _wait_clients_cut(admin)
        else:
            disabled = {r["name"] or "" for r in admin.command("SHOW DATABASES") if r.get("disabled") == "1"}
            for name in sorted((remembered | disabled) - {"", "pgbouncer"}):
                _known_db(admin, f"ENABLE {_ident(name)}")
            if remembered:
                state.pop("disabled_dbs", None)
                self._save(lay, state)

    def pause(self, name: str, timeout: float = 10.0) -> float:
        """PgBouncer PAUSE: wait for in-flight transactions to finish, then hold new queries
        (clients wait, they get no error). Returns seconds taken. Raises PauseTimeout after
        ``timeout`` seconds, leaving the pooler resumed. The direct URI is not affected.

        The intent is saved before PAUSE is sent (``pause_pending``), so that a control plane
        killed while PAUSE waits knows on restart that the pooler may be held (see
        ``paused_names``). A PgBouncer that answers "already suspended/paused" holds a PAUSE of
        ours from before such a restart: it is resumed and paused again, within ``timeout``."""
        t0 = time.monotonic()
        with self._lock(name):
            lay = self.layout(name)
            state = self._load(name)
            if not self._pid(lay.pgbouncer_pid, lay):
                raise EndpointError(f"PgBouncer of {name} is not running")
            if state.get("paused"):
                return 0.0
            state["pause_pending"] = True
            self._save(lay, state)
            admin = self._admin(lay, state)
            try:
                try:
                    took = admin.pause(timeout)
                except EndpointError as exc:
                    if isinstance(exc, PauseTimeout) or "already" not in str(exc):
                        raise
                    log.info("endpoint %s was still paused by an earlier PAUSE: resuming and pausing again", name)
                    self._resume_admin(admin)
                    left = timeout - (time.monotonic() - t0)
                    if left <= 0:
                        raise PauseTimeout(f"PAUSE did not complete within {timeout:g}s") from None
                    took = admin.pause(left)
            except PauseTimeout:
                state["pause_pending"] = False  # PgBouncerAdmin.pause resumed the pooler
                self._save(lay, state)
                raise
            state["paused"], state["pause_pending"] = True, False
            self._save(lay, state)
            return took

    @staticmethod
    def _resume_admin(admin: PgBouncerAdmin) -> None:
        try:
            admin.command("RESUME")
        except EndpointError as exc:
            if "not paused" not in str(exc):
                raise

    def resume(self, name: str) -> None:
        """RESUME: held queries go on, to the current target. Resuming a pooler that is not
        paused is a success."""
        with self._lock(name):
            lay = self.layout(name)
            state = self._load(name)
            if self._pid(lay.pgbouncer_pid, lay):
                self._resume_admin(self._admin(lay, state))
            state["paused"], state["pause_pending"] = False, False
            self._save(lay, state)

    def paused_names(self) -> list[str]:
        """Endpoints that are, or may be, paused (a PAUSE completed or was being sent)."""
        out = []
        for name in self.names():
            try:
                state = self._load(name)
            except (EndpointError, ValueError):
                continue
            if state.get("paused") or state.get("pause_pending"):
                out.append(name)
        return out

    def remove(self, name: str) -> list[int]:
        """Stop both processes and delete every file of the endpoint. Returns the pids stopped."""
        with self._lock(name):
            lay = self.layout(name)
            self._drop_admin(name)
            pids = _stop_layout_processes(lay)
            for p in self._popens.pop(name, []):
                p.poll()
            if not lay.socket_dir.is_relative_to(lay.dir):
                shutil.rmtree(lay.socket_dir, ignore_errors=True)
            shutil.rmtree(lay.dir, ignore_errors=True)
            return pids

    def stop_all(self) -> list[int]:
        """Stop every endpoint's processes (files stay; ``ensure`` starts them again)."""
        for name in list(self._admins):
            self._drop_admin(name)
        pids = stop_all_endpoints(self.settings)
        for popens in self._popens.values():
            for p in popens:
                p.poll()
        self._popens.clear()
        return pids

    def status(self, name: str) -> EndpointStatus:
        with self._lock(name):
            return self._status(name)

    def _status(self, name: str) -> EndpointStatus:
        lay = self.layout(name)
        state = self._load(name)
        spec = EndpointSpec.model_validate(state["spec"])
        hpid = self._pid(lay.haproxy_pid, lay)
        bpid = self._pid(lay.pgbouncer_pid, lay)
        problems = []
        if hpid is None:
            problems.append("HAProxy (direct URI) is not running")
        if bpid is None:
            problems.append("PgBouncer (pooled URI) is not running")
        if spec.target is None:
            problems.append("no target: new connections are refused")
        if state.get("paused") or state.get("pause_pending"):
            problems.append("paused: queries on the pooled URI are held")
        host = self.settings.host
        return EndpointStatus(
            name=name, direct=Endpoint(host=host, port=spec.direct_port),
            pooled=Endpoint(host=host, port=spec.pooled_port), target=spec.target,
            paused=bool(state.get("paused")), running=hpid is not None and bpid is not None,
            message="; ".join(problems) or None, haproxy_pid=hpid, pgbouncer_pid=bpid)
