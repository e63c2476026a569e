"""Backups of a region's writers into the region's pgBackRest repository.

One backup worker thread per cluster (never the converge loop: a backup takes minutes) keeps
the stanza in place, decides with the pure :func:`next_backup` when to take which backup, runs it,
and reads the repository back (``pgbackrest info``) for the status the control plane shows.
A backup interrupted by a crash of the agent leaves a lock and a partial backup behind; the next
``pgbackrest backup`` of the same stanza cleans both up and starts again (pgBackRest resumes or
removes the partial backup itself).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from pgcrdr.agent import backrest
from pgcrdr import processes as proc
from pgcrdr.agent.clusters import ClusterRegistry, ClusterRuntime
from pgcrdr.agent.layout import RegionLayout, node_name
from pgcrdr.agentapi.models import BackupInfo, BackupPolicy, BackupRun, BackupStatus, BackupType, WalArchiveStatus
from pgcrdr.agent.postgres import connect_superuser
from pgcrdr.config import RegionConfig, Settings

log = logging.getLogger(__name__)

WORKER_TICK_S = 2.0
INFO_REFRESH_S = 30.0
RETRY_AFTER_FAILURE_S = 30.0
# A backup yields to the region's serving processes: pgBackRest and its workers run at a lower CPU
# priority and the lowest best-effort I/O priority (when many writers are promoted at once, e.g.
# a region lost, each starts a full backup of its new timeline right after its promotion; at full
# priority those backups took the CPU the other pairs' promotions needed).
BACKUP_PRIORITY = ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7"]


def _ts(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _writer_gone(c: ClusterRuntime, stop: threading.Event) -> str | None:
    """Why the cluster's backup has no writer to finish on, on purpose; None: it still has one."""
    if stop.is_set():
        return "the agent stops"
    if c.deleted:
        return "the service was deleted"
    if c.spec.standby_of is not None:
        return "its writer was demoted to a standby cluster"
    if not c.spec.powered:
        return "its cluster was powered off (fenced)"
    return None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_backup(policy: BackupPolicy, timeline: int | None, backups: list[BackupInfo], now: float,
                last_failure: float | None) -> BackupType | None:
    """Which backup the writer needs now, if any. Pure.

    The first backup on the writer's timeline is full (a writer promoted by a failover or a
    failback starts its own chain in its region); then a full every ``full_interval_s`` and an
    incremental every ``incr_interval_s``. After a failure, wait before retrying."""
    if not policy.enabled or timeline is None:
        return None
    if last_failure is not None and now - last_failure < RETRY_AFTER_FAILURE_S:
        return None
    mine = [b for b in backups if b.timeline == timeline and not b.error]
    fulls = [b for b in mine if b.type == "full"]
    if not fulls:
        return "full"
    if now - _ts(fulls[-1].stop_time) >= policy.full_interval_s:
        return "full"
    if now - _ts(mine[-1].stop_time) >= policy.incr_interval_s:
        return "incr"
    return None


class Backups:
    """The region's pgBackRest repository and one backup worker per cluster. ``stop`` ends the
    workers (the agent is stopping)."""

    def __init__(self, settings: Settings, region: RegionConfig, layout: RegionLayout, clusters: ClusterRegistry,
                 stop: threading.Event):
        self.settings = settings
        self.region = region
        self.clusters = clusters
        self.repo = backrest.RepoLayout(layout.region_dir / "backrest")
        self._stop = stop
        self._conf_lock = threading.Lock()  # pgbackrest.conf is written by several threads

    # --- region configuration ----------------------------------------------------------------

    def _repo_options(self) -> dict[str, str]:
        try:
            return backrest.repo_options_from_env(self.region.slug)
        except ValueError as exc:
            log.error("%s", exc)
            return {}

    def write_conf(self) -> None:
        """(Re)write the region's pgbackrest.conf: one stanza per cluster, retention from its spec."""
        repo = self.repo
        for d in (repo.dir, repo.log_path, repo.lock_path, repo.spool_path):
            proc.make_node_dir(self.settings, d, 0o750)
        if "repo1-path" not in self._repo_options() and "repo1-type" not in self._repo_options():
            proc.make_node_dir(self.settings, repo.repo_path, 0o750)
        with self._conf_lock:
            # The registry's lock is NOT taken here: put_spec holds it while it registers a
            # cluster (which writes this file), so taking it under the conf lock inverted the lock
            # order and deadlocked the agent when clusters were created while backups ran (seen
            # with 25 clusters). ClusterRegistry.all() does not take it.
            stanzas = {c.spec.cluster: c.spec.backup.retention_full for c in self.clusters.all() if not c.deleted}
            proc.write_node_file(self.settings, repo.conf,
                                 backrest.render_conf(repo, self._repo_options(), stanzas), 0o640)

    def delete_stanza(self, cluster: str) -> None:
        """A deleted service's backups go with it (a service created again under the same name
        is a new database: its stanza must start empty)."""
        opts = self._repo_options()
        try:
            if "repo1-type" not in opts and "repo1-path" not in opts:
                for sub in ("backup", "archive"):
                    shutil.rmtree(self.repo.repo_path / sub / cluster, ignore_errors=True)
            else:
                ids = self.node_ids()
                backrest.run([*backrest.base_args(self.repo, cluster), "stop"], user_ids=ids, timeout=60)
                r = backrest.run([*backrest.base_args(self.repo, cluster), "--force", "stanza-delete"],
                                 user_ids=ids, timeout=600)
                if r.returncode != 0:
                    log.warning("stanza-delete %s: %s", cluster, backrest.last_error_line(r.stderr or r.stdout))
            self.write_conf()
        except Exception:  # the files only matter if the name is reused; say so in the log
            log.exception("could not delete the pgBackRest stanza of %s", cluster)

    def archive_command_for(self, cluster: str, data_dir: Path) -> str:
        return backrest.archive_command(self.repo, cluster, data_dir)

    def node_ids(self) -> tuple[int, int] | None:
        return proc.node_user_ids(self.settings)

    # --- the worker -----------------------------------------------------------------------------

    def start_worker(self, c: ClusterRuntime) -> None:
        c.backup_status = BackupStatus(
            repository=backrest.repository_description(self.repo, self._repo_options()), stanza=c.spec.cluster)
        t = threading.Thread(target=self._backup_loop, args=(c,), name=f"backup-{c.spec.cluster}", daemon=True)
        c.backup_thread = t
        t.start()

    def _backup_loop(self, c: ClusterRuntime) -> None:
        while not self._stop.is_set() and not c.deleted:
            try:
                self._backup_step(c)
            except Exception as exc:  # keep the worker alive; say what failed
                log.exception("backup worker of %s", c.spec.cluster)
                self._backup_error(c, f"backup worker error: {exc}")
            self._stop.wait(WORKER_TICK_S)

    def _backup_error(self, c: ClusterRuntime, message: str) -> None:
        st = c.backup_status
        if st is not None:
            c.backup_status = st.model_copy(update={"last_error": message, "last_error_time": now_iso()})

    def _writer(self, c: ClusterRuntime) -> tuple[int, int] | None:
        """(node index, timeline) of the cluster's writer when it is up, ready and not a standby."""
        st = c.status
        if (st is None or c.spec.standby_of is not None or not c.spec.powered or c.held or c.rebuild_active
                or st.lsn is None or st.lsn.in_recovery or not st.ready):
            return None
        for i in (1, 2, 3):
            if node_name(c.spec.cluster, i) == st.lsn.node:
                return i, st.lsn.timeline or 1
        return None

    def _any_data_dir(self, c: ClusterRuntime) -> Path | None:
        for i in (1, 2, 3):
            d = c.layout.data_dir(node_name(c.spec.cluster, i))
            if (d / "global" / "pg_control").exists():
                return d
        return None

    def _ensure_stanza(self, c: ClusterRuntime) -> bool:
        if c.stanza_ok:
            return True
        data_dir = self._any_data_dir(c)
        if data_dir is None:
            return False
        self.write_conf()
        r = backrest.run([*backrest.base_args(self.repo, c.spec.cluster), f"--pg1-path={data_dir}", "--no-online",
                          "stanza-create"], user_ids=self.node_ids(), timeout=120, cwd=self.repo.dir)
        if r.returncode != 0:
            self._backup_error(c, f"stanza-create failed: {backrest.last_error_line(r.stderr or r.stdout)}")
            return False
        c.stanza_ok = True
        c.backup_info_at = 0.0
        log.info("%s: pgBackRest stanza ready in %s", c.spec.cluster, self.repo.repo_path)
        return True

    def _refresh_info(self, c: ClusterRuntime, force: bool = False) -> None:
        if not force and time.monotonic() - c.backup_info_at < INFO_REFRESH_S:
            return
        c.backup_info_at = time.monotonic()
        st = c.backup_status
        if st is None:
            return
        try:
            data = backrest.info(self.repo, c.spec.cluster, self.node_ids())
        except Exception as exc:
            c.backup_status = st.model_copy(update={"ok": False, "message": f"repository unreadable: {exc}"})
            return
        problem = backrest.stanza_problem(data, c.spec.cluster)
        amin, amax = backrest.archive_range(data, c.spec.cluster)
        archive = (st.archive or WalArchiveStatus()).model_copy(update={"archive_min": amin, "archive_max": amax})
        if problem is not None:
            c.stanza_ok = False  # stanza-create again (it refuses if the repository is corrupt)
        c.backup_status = st.model_copy(update={
            "backups": backrest.parse_backups(data, c.spec.cluster), "archive": archive,
            "ok": problem is None, "message": f"repository: {problem}" if problem else None,
        })

    def _refresh_archiver(self, c: ClusterRuntime, index: int) -> None:
        st = c.backup_status
        if st is None:
            return
        try:
            with connect_superuser(c.spec, c.ports.pg(index), self.settings.host) as conn:
                row = conn.execute(
                    "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,"
                    " last_failed_time FROM pg_stat_archiver").fetchone()
        except Exception as exc:
            log.debug("pg_stat_archiver of %s: %s", c.spec.cluster, exc)
            return
        if row is None:
            return

        def iso(t: datetime | None) -> str | None:
            return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None

        archive = (st.archive or WalArchiveStatus()).model_copy(update={
            "archived_count": int(row[0] or 0), "last_archived_wal": row[1], "last_archived_time": iso(row[2]),
            "failed_count": int(row[3] or 0), "last_failed_wal": row[4], "last_failed_time": iso(row[5]),
        })
        failing = bool(row[5] and (row[2] is None or row[5] > row[2]))
        message = st.message
        if failing:
            message = f"WAL archiving to the {self.region.cloud_name} repository is failing (last failure on {row[4]})"
        elif message and message.startswith("WAL archiving"):
            message = None
        c.backup_status = st.model_copy(update={"archive": archive, "message": message,
                                                "ok": st.ok and not failing})

    def _backup_step(self, c: ClusterRuntime) -> None:
        if not c.spec.backup.enabled:
            return
        writer = self._writer(c)
        if writer is None:
            if c.stanza_ok or self._any_data_dir(c) is not None:
                self._ensure_stanza(c)  # a standby's stanza is ready before it is ever promoted
                if c.stanza_ok:
                    self._refresh_info(c)
            return
        index, timeline = writer
        if not self._ensure_stanza(c):
            return
        self._refresh_info(c)
        self._refresh_archiver(c, index)
        st = c.backup_status
        assert st is not None
        if c.backup_failed_at is not None and time.time() - c.backup_failed_at < RETRY_AFTER_FAILURE_S:
            return  # a failed backup (requested or scheduled) is retried, not hammered
        requested = c.backup_requested
        kind = requested or next_backup(c.spec.backup, timeline, st.backups, time.time(), c.backup_failed_at)
        if kind is None:
            return
        c.backup_requested = None
        if not self._run_backup(c, index, kind) and requested and c.backup_requested is None:
            c.backup_requested = requested  # asked for: retried until it succeeds

    def request_backup(self, cluster: str, kind: BackupType = "full") -> BackupStatus:
        c = self.clusters.get(cluster)
        c.backup_requested = kind
        assert c.backup_status is not None
        return c.backup_status

    def status(self, cluster: str) -> BackupStatus:
        c = self.clusters.get(cluster)
        self._refresh_info(c, force=True)
        assert c.backup_status is not None
        return c.backup_status

    def _run_backup(self, c: ClusterRuntime, index: int, kind: BackupType) -> bool:
        name = node_name(c.spec.cluster, index)
        self.write_conf()
        pgpass = c.layout.dir / "backrest.pgpass"
        proc.write_node_file(self.settings, pgpass, f"*:*:*:postgres:{c.spec.superuser_password}\n", 0o600)
        argv = [*BACKUP_PRIORITY, *backrest.base_args(self.repo, c.spec.cluster),
                f"--pg1-path={c.layout.data_dir(name)}",
                f"--pg1-port={c.ports.pg(index)}", f"--pg1-socket-path={c.layout.socket_dir(name)}",
                "--pg1-user=postgres", f"--type={kind}", "--log-level-console=detail", "backup"]
        size = backrest.data_size(c.layout.data_dir(name))
        run = BackupRun(type=kind, started=now_iso(), size=size, done=0)
        assert c.backup_status is not None  # set by start_worker
        c.backup_status = c.backup_status.model_copy(update={"running": run})
        log.info("%s: %s backup starts from %s", c.spec.cluster, kind, name)
        t0 = time.monotonic()
        env = {"PGPASSFILE": str(pgpass), "PGSSLMODE": "disable"}
        out_file = c.layout.dir / "backup.log"  # pgBackRest's detail output: a line per file with its %
        with open(out_file, "w") as out_f:
            p = subprocess.Popen(argv, stdout=out_f, stderr=subprocess.STDOUT, start_new_session=True,
                                 **backrest.as_node_user(self.node_ids(), env, self.repo.dir))
        c.backup_pid = p.pid
        while p.poll() is None:
            if self._stop.wait(1.0) or _writer_gone(c, self._stop) is not None:
                # The agent stops, or the writer is being demoted/fenced: the backup is abandoned
                # (pgBackRest cleans the partial backup up on the next run).
                _signal_group(p.pid, signal.SIGTERM)  # pgbackrest and its local worker processes
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    _signal_group(p.pid, signal.SIGKILL)
                    p.wait(5)
                break
            pct = backrest.last_percent(backrest.tail(out_file))
            if pct is not None:
                run = run.model_copy(update={"done": int(size * pct / 100)})
                c.backup_status = c.backup_status.model_copy(update={"running": run})
        p.wait()
        output = backrest.tail(out_file, 4000)
        c.backup_pid = None
        c.backup_status = c.backup_status.model_copy(update={"running": None})
        gone = _writer_gone(c, self._stop)
        if p.returncode == 0:
            c.backup_failed_at = None
            log.info("%s: %s backup done in %.1fs", c.spec.cluster, kind, time.monotonic() - t0)
            c.backup_status = c.backup_status.model_copy(update={"last_error": None})
        elif gone is not None:
            # Not a failure of the backup or of the repository: its writer went on purpose (a
            # planned move demoted it, a failover fenced it) or the agent stops. Nothing to show
            # as an error, nor to hold the next backup back once the cluster writes again.
            log.info("%s: %s backup abandoned after %.1fs: %s", c.spec.cluster, kind, time.monotonic() - t0, gone)
        else:
            c.backup_failed_at = time.time()
            why = (f"pgbackrest was killed by signal {-p.returncode}" if p.returncode < 0
                   else backrest.last_error_line(output))
            log.warning("%s: %s backup failed (exit %s): %s", c.spec.cluster, kind, p.returncode, why)
            self._backup_error(c, f"{kind} backup failed: {why}")
        self._refresh_info(c, force=True)
        return p.returncode == 0
