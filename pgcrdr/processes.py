"""Processes pgcrdr runs as the node user (a region's etcd, Patroni, PostgreSQL, HAProxy; the
control plane's Service URI endpoints): spawn, pid files, kill by PID.

Everything here works from files alone (pid files and the ``postmaster.pid`` of each data
directory), so processes can be found and stopped while whoever started them is dead.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeGuard

from pgcrdr.config import Settings

log = logging.getLogger(__name__)


def running_as_root() -> bool:
    return os.geteuid() == 0


def node_user_ids(settings: Settings) -> tuple[int, int] | None:
    """(uid, gid) of the node user when we run as root and must drop privileges, else None."""
    if not running_as_root():
        return None
    pw = pwd.getpwnam(settings.os_user)
    return pw.pw_uid, pw.pw_gid


def chown_for_node(settings: Settings, path: Path, mode: int | None = None) -> None:
    """Make ``path`` owned by the node user (when root) and set ``mode``."""
    ids = node_user_ids(settings)
    if ids is not None:
        os.chown(path, *ids)
    if mode is not None:
        os.chmod(path, mode)


def make_node_dir(settings: Settings, path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    chown_for_node(settings, path, mode)
    return path


def write_node_file(settings: Settings, path: Path, content: str, mode: int = 0o600) -> bool:
    """Write ``content`` (atomically) if it differs; owned by the node user. True if changed."""
    try:
        if path.read_text() == content:
            chown_for_node(settings, path, mode)
            return False
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    chown_for_node(settings, tmp, mode)
    tmp.replace(path)
    return True


def spawn(
    settings: Settings,
    argv: list[str],
    *,
    pid_file: Path,
    log_file: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the node user in its own session, output appended to ``log_file``."""
    ids = node_user_ids(settings)
    base_env = {"PATH": f"{settings.node_venv}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "HOME": str(cwd)}
    base_env.update(env or {})
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        if ids is not None:
            os.chown(log_file, *ids)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=base_env,
            start_new_session=True,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{proc.pid}\n")
    log.info("started pid %s: %s", proc.pid, " ".join(argv))
    return proc


def read_pid(path: Path) -> int | None:
    """First line of a pid file (also the format of postmaster.pid), or None."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first) if first else None
    except (OSError, ValueError):
        return None


def reap(pid: int) -> None:
    """Collect an exited child of ours so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def is_running(pid: int | None) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited postmaster may linger as one)."""
    if not pid or pid <= 0:
        return False
    reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # state is the first field after the ")" closing the command name
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def pid_matches(pid: int | None, marker: str) -> TypeGuard[int]:
    """``pid`` runs and its command line mentions ``marker`` (guards against PID reuse)."""
    return pid is not None and is_running(pid) and marker in cmdline(pid)


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal pid %s", pid)
        return False


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def kill_postmaster_tree(pid: int) -> list[int]:
    """SIGKILL a postmaster and every backend, like a machine loss.

    Each PostgreSQL child runs in its own process group (it calls setsid()), so there is no group
    to kill at once. Order: client backends first (no commit can be acknowledged after that), the
    postmaster, then walsenders last, so WAL already acknowledged to a client is not cut off on
    its way to a standby more than a real crash would.
    """
    kids = children_of(pid)
    senders = [k for k in kids if "walsender" in cmdline(k)]
    others = [k for k in kids if k not in senders]
    for k in others:
        signal_pid(k, signal.SIGKILL)
    signal_pid(pid, signal.SIGKILL)
    for k in senders:
        signal_pid(k, signal.SIGKILL)
    return [pid, *others, *senders]


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; returns those still running after ``timeout`` seconds."""
    left = [p for p in pids if p]
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in left if is_running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster of ``data_dir`` (from postmaster.pid), or None."""
    pid = read_pid(data_dir / "postmaster.pid")
    if pid and is_running(pid) and (str(data_dir) in cmdline(pid) or cwd_of(pid) == str(data_dir)):
        return pid
    return None


def stop_postmaster(data_dir: Path, timeout: float = 30.0) -> list[int]:
    """Fast shutdown (SIGINT) of the postmaster of ``data_dir``; SIGKILL of its group if it
    does not go within ``timeout``. Returns the pids signalled."""
    pid = postmaster_pid(data_dir)
    if pid is None:
        return []
    signal_pid(pid, signal.SIGINT)
    if wait_gone([pid], timeout):
        log.warning("postmaster %s of %s ignored fast shutdown; SIGKILL", pid, data_dir)
        kill_postmaster_tree(pid)
        wait_gone([pid], 5)
    return [pid]


def processes_under(path: Path) -> list[int]:
    """Pids whose command line or working directory lies under ``path`` (not ourselves)."""
    marker = str(path).rstrip("/") + "/"
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me or not is_running(pid):
            continue
        cwd = cwd_of(pid) + "/"
        if cwd.startswith(marker) or marker in cmdline(pid):
            found.append(pid)
    return found
