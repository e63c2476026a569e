"""Backups of a real cluster into its region's real pgBackRest repository.

A writer is backed up in full as soon as it is ready (the control plane reports RUNNING only
then), archives its WAL, takes an incremental backup on request, and a backup restored into a
scratch cluster holds the same data (checksum of the table contents). A repository made
unreadable is reported, and writes go on.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from pgcrdr.agent import backrest
from pgcrdr.agentapi.models import BackupStatus
from pgcrdr.processes import node_user_ids
from tests.component.conftest import Agent, make_spec, wait_for
from tests.component.test_agent import dsn, wait_ready

pytestmark = pytest.mark.component

CHECKSUM_SQL = "SELECT md5(string_agg(id::text || ':' || note, ',' ORDER BY id)) FROM kept"


def switch_wal(port: int, cluster: str) -> None:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres password=su-{cluster} dbname=postgres "
                         "sslmode=require", autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")


def backups(agent: Agent, cluster: str) -> BackupStatus:
    with agent.http() as c:
        r = c.get(f"/clusters/{cluster}/backups")
    assert r.status_code == 200, r.text
    return BackupStatus.model_validate(r.json())


@pytest.fixture(scope="module")
def cluster(agent: Agent, tls: dict[str, str]) -> str:
    with agent.http() as c:
        r = c.put("/clusters/bk", json=make_spec("bk", 1, tls))
        assert r.status_code == 200, r.text
    wait_ready(agent, "bk")
    return "bk"


def test_a_ready_writer_gets_a_full_backup_and_archives_its_wal(agent: Agent, cluster: str) -> None:
    st = wait_for("the first full backup", lambda: (b := backups(agent, cluster)).backups and b, timeout=120)
    [full] = st.backups
    assert full.type == "full" and full.size > 1_000_000 and full.timeline == 1 and full.lsn_stop
    assert st.repository == str(agent.region_dir / "backrest" / "repo") and st.ok, st
    # the cluster status (what the control plane polls) carries it from the next tick on
    status = wait_for("the backup in the cluster status",
                      lambda: (s := agent.status(cluster)).backup and s.backup.backups and s, timeout=10)
    assert status.backup.backups[0].label == full.label
    port = status.primary.port
    with psycopg.connect(dsn(port), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    switch_wal(port, cluster)
    # the archiver pushed the switched segment to the repository
    wait_for("WAL archived", lambda: (a := agent.status(cluster).backup.archive) and a.archived_count > 0
             and a.failed_count == 0 and a, timeout=60)


def test_incremental_backup_on_request_and_restore_into_a_scratch_cluster(agent: Agent, cluster: str) -> None:
    port = agent.status(cluster).primary.port
    with psycopg.connect(dsn(port), autocommit=True) as conn:
        conn.execute("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(5001, 8000) g")
        expected = conn.execute(CHECKSUM_SQL).fetchone()[0]
    with agent.http() as c:
        assert c.post(f"/clusters/{cluster}/backups", params={"type": "incr"}).status_code == 200
        bad = c.post(f"/clusters/{cluster}/backups", params={"type": "weekly"})
        assert bad.status_code in (400, 422) and "type" in bad.json()["message"]
    st = wait_for("the incremental backup", lambda: len((b := backups(agent, cluster)).backups) >= 2 and b,
                  timeout=120)
    incr = st.backups[-1]
    assert incr.type == "incr" and incr.delta < st.backups[0].size

    # Restore the newest backup into a scratch cluster (PITR to the end of the archive) and
    # compare the table contents.
    repo = backrest.RepoLayout(agent.region_dir / "backrest")
    scratch = Path(tempfile.mkdtemp(prefix="pgcrdr-scratch-", dir="/tmp"))
    ids = node_user_ids(agent.settings)
    try:
        scratch.chmod(0o755)
        data = scratch / "data"
        data.mkdir(mode=0o700)
        if ids:
            import os

            os.chown(scratch, *ids)
            os.chown(data, *ids)
        r = backrest.run([*backrest.base_args(repo, cluster), f"--pg1-path={data}", f"--set={incr.label}",
                          "--type=immediate", "--target-action=promote", "restore"], user_ids=ids, timeout=300)
        assert r.returncode == 0, r.stderr
        # the scratch server must not archive into the real stanza, nor listen where others do
        with open(data / "postgresql.auto.conf", "a") as f:
            f.write("archive_mode = off\nport = 5\nlisten_addresses = ''\n"
                    f"unix_socket_directories = '{scratch}'\nssl = off\nlogging_collector = off\n")
        (data / "postgresql.conf").write_text("")  # Patroni's file names paths of the real node
        (data / "pg_hba.conf").write_text("local all all trust\n")
        pg_ctl = str(agent.settings.pg_bin_dir / "pg_ctl")
        r = backrest.run([pg_ctl, "-D", str(data), "-l", str(scratch / "log"), "-w", "-t", "60", "start"],
                         user_ids=ids, timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr + (scratch / "log").read_text()
        try:
            def restored() -> str | None:
                with psycopg.connect(host=str(scratch), port=5, user="postgres", dbname="defaultdb",
                                     autocommit=True) as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return None
                    return conn.execute(CHECKSUM_SQL).fetchone()[0]

            # an immediate restore of the incremental backup: what was committed before it started
            assert wait_for("the scratch cluster to finish recovery", restored, timeout=60) == expected
        finally:
            backrest.run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], user_ids=ids, timeout=60)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_broken_repository_is_reported_and_writes_go_on(agent: Agent, cluster: str) -> None:
    repo = agent.region_dir / "backrest" / "repo"
    aside = repo.with_name("repo.aside")
    repo.rename(aside)
    try:
        port = agent.status(cluster).primary.port
        with agent.http() as c:
            c.post(f"/clusters/{cluster}/backups", params={"type": "incr"})
        with psycopg.connect(dsn(port), autocommit=True) as conn:
            conn.execute("INSERT INTO kept VALUES (9001, 'during the outage of the repository')")
        switch_wal(port, cluster)

        def reported() -> BackupStatus | None:
            st = backups(agent, cluster)
            return st if (not st.ok and st.message) or (st.last_error and "backup failed" in st.last_error) else None

        st = wait_for("the broken repository to be reported", reported, timeout=90)
        assert st.message or st.last_error
        with psycopg.connect(dsn(port), autocommit=True) as conn:  # writes are not blocked
            conn.execute("INSERT INTO kept VALUES (9002, 'still writable')")
    finally:
        if repo.exists():
            shutil.rmtree(repo)
        aside.rename(repo)
    # once the repository is back, archiving catches up and the report clears
    switch_wal(port, cluster)
    wait_for("the repository to be healthy again",
             lambda: (st := backups(agent, cluster)).ok and not st.message and st, timeout=120)



def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])  # field 19: nice


def _backup_processes(stanza: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith(backrest.PGBACKREST) and f"--stanza={stanza}" in cmd and cmd.rstrip().endswith(" backup"):
            pids.append(int(entry.name))
    return pids


def test_a_backup_killed_half_way_is_reported_cleaned_up_and_retried(agent: Agent, cluster: str) -> None:
    import os
    import signal

    port = agent.status(cluster).primary.port
    with psycopg.connect(dsn(port), autocommit=True) as conn:  # enough data that a full takes a moment
        conn.execute("CREATE TABLE filler AS SELECT g, md5(g::text) || md5((g + 1)::text) AS pad "
                     "FROM generate_series(1, 600000) g")
    before = {b.label for b in backups(agent, cluster).backups}
    with agent.http() as c:
        assert c.post(f"/clusters/{cluster}/backups", params={"type": "full"}).status_code == 200
    pids = wait_for("pgbackrest backup to run", lambda: _backup_processes(cluster), timeout=30, interval=0.05)
    # it yields to the serving processes: a lower CPU priority and the lowest best-effort I/O one
    assert _nice(pids[0]) == 10
    assert subprocess.run(["ionice", "-p", str(pids[0])], capture_output=True, text=True).stdout.strip() \
        == "best-effort: prio 7"
    for pid in pids:  # as if the host died under it
        os.kill(pid, signal.SIGKILL)
    st = wait_for("the killed backup to be reported",
                  lambda: (b := backups(agent, cluster)).last_error and "killed" in b.last_error and b, timeout=30)
    assert "backup failed: pgbackrest was killed by signal 9" in st.last_error, st.last_error
    # retried on its own once the back-off has passed; pgBackRest cleans the partial backup up
    st = wait_for("the retried backup", lambda: (b := backups(agent, cluster)).backups[-1].label not in before
                  and b.backups[-1].type == "full" and not b.last_error and b, timeout=150)
    assert st.ok and not any(b.error for b in st.backups)


def test_a_backup_whose_writer_is_fenced_is_abandoned_not_failed(agent: Agent, cluster: str,
                                                                 tls: dict[str, str]) -> None:
    """A failover fences the old writer (powers its cluster off) while a backup runs: the backup
    stops, and neither its status nor the next backup's schedule treats that as a failure."""
    port = agent.status(cluster).primary.port
    with psycopg.connect(dsn(port), autocommit=True) as conn:  # enough data that a full takes a moment
        conn.execute("CREATE TABLE IF NOT EXISTS filler AS SELECT g, md5(g::text) || md5((g + 1)::text) AS pad "
                     "FROM generate_series(1, 600000) g")
    with agent.http() as c:
        assert c.post(f"/clusters/{cluster}/backups", params={"type": "full"}).status_code == 200
    wait_for("pgbackrest backup to run", lambda: _backup_processes(cluster), timeout=30, interval=0.05)
    with agent.http() as c:
        r = c.put(f"/clusters/{cluster}", json=make_spec(cluster, 1, tls, powered=False, generation=2))
        assert r.status_code == 200, r.text
    wait_for("the backup to stop", lambda: not _backup_processes(cluster), timeout=30, interval=0.1)
    st = wait_for("the backup no longer running", lambda: (b := backups(agent, cluster)).running is None and b,
                  timeout=30)
    assert st.last_error is None and st.ok, st
    assert "bk: full backup abandoned after" in agent.log_path.read_text(errors="replace")
    with agent.http() as c:
        r = c.put(f"/clusters/{cluster}", json=make_spec(cluster, 1, tls, generation=3))
        assert r.status_code == 200, r.text
    wait_ready(agent, cluster)
