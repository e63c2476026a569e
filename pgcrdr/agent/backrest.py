"""pgBackRest for one region: its repository, configuration and commands.

Each region has one repository (``<region>/backrest/repo`` in the embedded default; any
repository pgBackRest supports, e.g. S3-compatible storage, through ``PGCRDR_BACKREST_REPO_<REGION>``)
and one stanza per cluster, named after the cluster. Everything that builds a command line or
reads pgBackRest's output is pure and unit-tested; ``run`` is the only place that executes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgcrdr.agentapi.models import BackupInfo
from pgcrdr.agent.wal import WAL_SEGMENT, segno_of, wal_name, wal_segno
from pgcrdr.agentapi.lsn import parse_lsn

__all__ = ["WAL_SEGMENT", "segno_of", "wal_name", "wal_segno"]  # used as backrest.*

log = logging.getLogger(__name__)

PGBACKREST = "/usr/bin/pgbackrest"


@dataclass(frozen=True)
class RepoLayout:
    """The files of a region's pgBackRest set-up."""

    dir: Path  # <region>/backrest

    @property
    def conf(self) -> Path:
        return self.dir / "pgbackrest.conf"

    @property
    def repo_path(self) -> Path:
        return self.dir / "repo"

    @property
    def log_path(self) -> Path:
        return self.dir / "log"

    @property
    def lock_path(self) -> Path:
        return self.dir / "lock"

    @property
    def spool_path(self) -> Path:
        return self.dir / "spool"


def repo_options_from_env(region_slug: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Repository options for production: ``PGCRDR_BACKREST_REPO_<SLUG>`` holds
    ``key=value`` pairs separated by commas or newlines (e.g. ``repo1-type=s3,repo1-s3-bucket=b,...``).
    Empty: a posix repository under the region's directory."""
    env = os.environ if environ is None else environ
    raw = env.get(f"PGCRDR_BACKREST_REPO_{region_slug.upper().replace('-', '_')}", "")
    out: dict[str, str] = {}
    for item in raw.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip().startswith("repo1-"):
            raise ValueError(f"bad pgBackRest repository option {item!r}: expected repo1-KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def render_conf(layout: RepoLayout, repo_options: dict[str, str], stanzas: dict[str, int]) -> str:
    """pgbackrest.conf of a region; ``stanzas`` maps each cluster to its full-backup retention."""
    glob: dict[str, str] = {
        "repo1-path": str(layout.repo_path),
        "log-path": str(layout.log_path),
        "lock-path": str(layout.lock_path),
        "spool-path": str(layout.spool_path),
        "log-level-console": "warn",
        "log-level-file": "info",
        "start-fast": "y",
        "compress-type": "lz4",
        "process-max": "2",
        "archive-timeout": "30",
        "delta": "y",
    }
    glob.update(repo_options)
    lines = ["[global]", *(f"{k}={v}" for k, v in glob.items()), ""]
    for stanza, retention in sorted(stanzas.items()):
        lines += [f"[{stanza}]", f"repo1-retention-full={retention}", ""]
    return "\n".join(lines)


def repository_description(layout: RepoLayout, repo_options: dict[str, str]) -> str:
    if repo_options.get("repo1-type") == "s3":
        return f"s3://{repo_options.get('repo1-s3-bucket', '?')}{repo_options.get('repo1-path', '/')}"
    return str(repo_options.get("repo1-path") or layout.repo_path)


def base_args(layout: RepoLayout, stanza: str) -> list[str]:
    return [PGBACKREST, f"--config={layout.conf}", f"--stanza={stanza}"]


def archive_command(layout: RepoLayout, stanza: str, data_dir: Path) -> str:
    """archive_command of a node: push to the region's repository (each node names its own
    data directory, so that the command works whichever node is the writer)."""
    return f"{PGBACKREST} --config={layout.conf} --stanza={stanza} --pg1-path={data_dir} archive-push %p"


# --- pgbackrest info --------------------------------------------------------------------------

def _iso(ts: Any) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_backups(info: list[dict[str, Any]], stanza: str) -> list[BackupInfo]:
    """The backups of ``stanza`` in ``pgbackrest info --output=json``, oldest first."""
    out: list[BackupInfo] = []
    for st in info:
        if st.get("name") != stanza:
            continue
        for b in st.get("backup") or []:
            arch = b.get("archive") or {}
            lsn = b.get("lsn") or {}
            inf = b.get("info") or {}
            repo = inf.get("repository") or {}
            ts = b.get("timestamp") or {}
            wal_start = arch.get("start")
            out.append(BackupInfo(
                label=b["label"], type=b.get("type", "full"),
                start_time=_iso(ts.get("start", 0)), stop_time=_iso(ts.get("stop", 0)),
                size=int(inf.get("size") or 0), delta=int(inf.get("delta") or 0),
                repo_size=int(repo.get("size") or 0), repo_delta=int(repo.get("delta") or 0),
                lsn_start=lsn.get("start"), lsn_stop=lsn.get("stop"),
                wal_start=wal_start, wal_stop=arch.get("stop"),
                timeline=wal_segno(wal_start)[0] if wal_start else None,
                error=bool(b.get("error")),
            ))
    return out


def stanza_problem(info: list[dict[str, Any]], stanza: str) -> str | None:
    """What pgBackRest says is wrong with the stanza, or None (code 2, "no valid backups", is
    not a problem: a new stanza has none yet)."""
    for st in info:
        if st.get("name") != stanza:
            continue
        status = st.get("status") or {}
        if status.get("code") in (0, 2, None):
            return None
        message = str(status.get("message") or f"pgBackRest status code {status.get('code')}")
        if status.get("code") == 99:
            return f"unreadable or corrupt (pgBackRest says: {message})"
        return message
    return "stanza not found in the repository"


def archive_range(info: list[dict[str, Any]], stanza: str) -> tuple[str | None, str | None]:
    for st in info:
        if st.get("name") != stanza:
            continue
        archives = st.get("archive") or []
        mins = [a.get("min") for a in archives if a.get("min")]
        maxs = [a.get("max") for a in archives if a.get("max")]
        return (min(mins) if mins else None, max(maxs) if maxs else None)
    return None, None


def restorable_backup(backups: list[BackupInfo], timeline: int, fork_lsn: str) -> BackupInfo | None:
    """The newest backup a standby of the new timeline can start from: taken on ``timeline``
    (the writer's timeline when it failed) and consistent before the fork."""
    fork = parse_lsn(fork_lsn)
    ok = [b for b in backups if not b.error and b.timeline == timeline and b.lsn_stop
          and parse_lsn(b.lsn_stop) <= fork]
    return ok[-1] if ok else None


def backup_before(backups: list[BackupInfo], target: datetime) -> BackupInfo | None:
    """The newest backup consistent before ``target`` (it ended before it): where a restore to
    that time starts. Pure."""
    ok = [b for b in backups if not b.error and datetime.fromisoformat(b.stop_time) <= target]
    return ok[-1] if ok else None


def recovery_target(target: datetime) -> str:
    """``target`` as PostgreSQL's recovery_target_time reads it (pgBackRest's --target)."""
    return target.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


_PERCENT = re.compile(r"\((?:[\d.]+\s*[KMGT]?B,\s*)?(\d+(?:\.\d+)?)%\)")


def last_percent(text: str) -> float | None:
    """The last ``(size, NN.NN%)`` of pgBackRest's detail output (backup or restore progress)."""
    found = _PERCENT.findall(text)
    return float(found[-1]) if found else None


def tail(path: Path, max_bytes: int = 2048) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def data_size(data_dir: Path) -> int:
    """Bytes of a data directory without its WAL: what a full backup copies."""
    total = 0
    for f in data_dir.rglob("*"):
        try:
            if f.is_file() and "pg_wal" not in f.parts:
                total += f.stat().st_size
        except OSError:
            continue
    return total


def last_error_line(text: str) -> str:
    """The line that says what went wrong: the last ERROR line, else the last line."""
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
    if errors:
        return errors[-1][:500]
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            return line[:500]
    return "no output"


# --- running ----------------------------------------------------------------------------------

def as_node_user(user_ids: tuple[int, int] | None, env: dict[str, str] | None, cwd: Path | None) -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a command as the node user (when we are root),
    with a minimal environment plus ``env``, in ``cwd``, without a terminal."""
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "HOME": str(cwd or "/tmp")}
    base_env.update(env or {})
    return {"env": base_env, "cwd": str(cwd) if cwd else None, "user": user_ids[0] if user_ids else None,
            "group": user_ids[1] if user_ids else None, "extra_groups": [] if user_ids else None,
            "stdin": subprocess.DEVNULL, "text": True}


def run(argv: list[str], *, user_ids: tuple[int, int] | None, env: dict[str, str] | None = None,
        timeout: float = 3600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a pgBackRest (or PostgreSQL) command as the node user; output captured."""
    return subprocess.run(argv, capture_output=True, timeout=timeout, **as_node_user(user_ids, env, cwd))


def info(layout: RepoLayout, stanza: str, user_ids: tuple[int, int] | None) -> list[dict[str, Any]]:
    r = run([*base_args(layout, stanza), "--output=json", "info"], user_ids=user_ids, timeout=60,
            cwd=layout.dir)
    if r.returncode != 0:
        raise RuntimeError(last_error_line(r.stderr or r.stdout))
    data = json.loads(r.stdout or "[]")
    return data if isinstance(data, list) else []
