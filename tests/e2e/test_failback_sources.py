"""Backups in every region, and a failback that rebuilds the primary from the cheapest correct
source and says which (issue: backups with pgBackRest; failback from the primary region's own
backups). Real clusters, real pgBackRest repositories, the real `avn`.

The tests run in order on one pair of services of the session's platform:
1. backups exist in the primary's region before the primary reports RUNNING;
2. region outage, failover: the recovery region's repository takes over;
3. failback with the old data directory deleted: rebuilt from the primary region's backups, the
   cross-region bytes are the WAL written since the failover, no acknowledged write is lost;
4. a second outage, the disk kept: the WAL the archive lacks comes from the old data directory
   kept aside, not across regions;
5. a third outage, with the primary region's repository corrupted as well: the failback falls
   back to a full copy from the active service and says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from pgcrdr.controlplane.services import cluster_id
from tests.helpers import (
    RunningPlatform,
    Writer,
    role_of,
    wait_backup_on_current_timeline,
    wait_for,
    wait_operation,
)

PROJECT = "pgcrdr"
PRI, REC = "pg-bk", "pg-bk-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"
state: dict = {}


def backup_list(p: RunningPlatform, name: str) -> list[dict]:
    return json.loads(p.avn("service", "backup-list", name, "--project", PROJECT, "--json").stdout)


def region_dir(p: RunningPlatform, cloud: str) -> Path:
    s = p.settings()
    region = s.region(cloud)
    assert region is not None
    return s.region_dir(region)


def ids(uri: str) -> set[str]:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM acked_writes")}


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def db_size(uri: str) -> int:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        return int(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0])


def outage_and_failover(p: RunningPlatform) -> None:
    """Writes through the Service URI while the primary's region dies and the pair fails over."""
    writer = Writer(p.service(PROJECT, PRI)["service_uri"])
    writer.start()
    wait_for("writes before the outage", lambda: len(writer.log.ok) > 20, timeout=60)
    p.pgcrdr("region", "down", PRI_CLOUD)
    p.avn("service", "update", PRI, "--disaster-recovery-role", "failed", "--project", PROJECT)
    op = wait_operation(p, PROJECT, PRI, "failover", timeout=120)
    assert op["state"] == "done", op
    n = len(writer.log.ok)
    wait_for("writes after the failover", lambda: len(writer.log.ok) > n + 50, timeout=60)
    log = writer.stop()
    state.setdefault("ok", set()).update(log.ok)
    stored = ids(p.service(PROJECT, REC)["service_uri"])
    state.setdefault("lost_in_failover", set()).update(state["ok"] - stored)
    p.pgcrdr("region", "up", PRI_CLOUD)


def lose_primary_disk(p: RunningPlatform) -> None:
    """The primary region came back without the old data directories (a lost disk)."""
    nodes = region_dir(p, PRI_CLOUD) / "clusters" / cluster_id(PROJECT, PRI) / "nodes"
    gone = [d for d in nodes.glob("*/data")]
    assert gone, f"no data directory under {nodes}"
    for d in gone:
        shutil.rmtree(d)


def drop_newest_archived_segment_before_the_fork(p: RunningPlatform) -> str:
    """The old writer died before its last segment reached the archive: the newest archived
    segment before the fork is dropped. (Older ones may predate the recovery service's own copy:
    then the restore cannot work and the failback falls back to a full copy, which the last test
    shows.) Returns the fork's LSN."""
    fork = wait_operation(p, PROJECT, PRI, "failover")["details"]["switch_lsn"]
    archive = region_dir(p, PRI_CLOUD) / "backrest" / "repo" / "archive" / cluster_id(PROJECT, PRI)
    tl = f"{wait_operation(p, PROJECT, PRI, 'failover')['details']['timeline'] - 1:08X}"
    before_fork = sorted(f for f in archive.rglob(f"{tl}*-*")
                         if f.name[24:25] == "-" and int(f.name[8:24], 16) < lsn(fork) // 2**24)
    assert len(before_fork) >= 3, before_fork
    before_fork[-1].unlink()
    return fork


def failback(p: RunningPlatform, source: str | None = None) -> tuple[dict, dict]:
    writer = Writer(p.service(PROJECT, REC)["service_uri"])
    writer.start()
    wait_for("writes on the recovery service", lambda: len(writer.log.ok) > 20, timeout=60)
    if source is None:
        p.avn("service", "update", PRI, "--disaster-recovery-role", "passive", "--project", PROJECT)
    else:
        with p.api() as c:
            r = c.put(f"/v1/project/{PROJECT}/service/{PRI}",
                      json={"disaster_recovery_role": "passive", "failback_source": source})
            assert r.status_code == 200, r.text
    seen_progress = []

    def restored() -> dict | None:
        svc = p.service(PROJECT, PRI)
        for n in svc["node_states"]:
            seen_progress.extend(u["phase"] for u in n["progress_updates"] if not u["completed"])
        return wait_operation(p, PROJECT, PRI, "failback_restore", timeout=1) if svc["state"] == "RUNNING" else None

    restore = wait_for("the failback restore", restored, timeout=300, interval=0.5)
    assert restore["state"] == "done", json.dumps(restore, indent=1)
    assert role_of(p, PROJECT, PRI) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    promote = wait_operation(p, PROJECT, PRI, "failback_promote")
    assert promote["state"] == "done", promote
    assert role_of(p, PROJECT, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    n = len(writer.log.ok)
    wait_for("writes after the failback", lambda: len(writer.log.ok) > n + 20, timeout=60)
    log = writer.stop()
    state["ok"].update(log.ok)
    stored = ids(p.service(PROJECT, PRI)["service_uri"])
    lost = state["ok"] - stored - state["lost_in_failover"]
    assert not lost, f"{len(lost)} acknowledged writes lost"
    return restore, {"progress_phases": sorted(set(seen_progress))}


def test_backups_in_the_primary_region_before_running(platform: RunningPlatform):
    p = platform
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", PRI_CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "180")
    # RUNNING only once a backup exists (what the Terraform provider waits for)
    backups = backup_list(p, PRI)
    assert backups and all(b["storage_location"].startswith(f"{PRI_CLOUD}:") for b in backups), backups
    assert backups[0]["data_size"] > 0 and backups[0]["backup_name"]
    table = p.avn("service", "backup-list", PRI, "--project", PROJECT).stdout
    assert backups[0]["backup_name"] in table
    uri = p.service(PROJECT, PRI)["service_uri"]
    with psycopg.connect(uri, connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
        # some volume, so that a full copy and a restore from the local backups differ clearly
        conn.execute("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS pad "
                     "FROM generate_series(1, 1000000) g")
    # an incremental backup on schedule is not awaited here: a full one after the load is what a
    # restore needs to skip the bulk load's WAL, so ask the region for it through the API
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "240")
    with p.api() as c:
        r = c.get(f"/v1/project/{PROJECT}/service/{PRI}/backups")
        assert r.status_code == 200
        body = r.json()
    assert body["wal_archive"]["region"] == PRI_CLOUD and body["wal_archive"]["ok"], body
    state["db_size"] = db_size(uri)


def test_failover_moves_backups_to_the_recovery_region(platform: RunningPlatform):
    p = platform
    outage_and_failover(p)
    # the new writer starts its own chain in its own region
    rec_backups = wait_for("a backup of the recovery service in its region",
                           lambda: backup_list(p, REC), timeout=120)
    assert all(b["storage_location"].startswith(f"{REC_CLOUD}:") for b in rec_backups), rec_backups
    assert (region_dir(p, REC_CLOUD) / "backrest" / "repo" / "backup" / cluster_id(PROJECT, REC)).is_dir()


def test_failback_with_the_disk_lost_restores_from_the_primary_regions_backups(platform: RunningPlatform):
    p = platform
    lose_primary_disk(p)
    # the segment the archive lacks: the active service received it by streaming and hands it over
    fork = drop_newest_archived_segment_before_the_fork(p)
    restore, seen = failback(p)
    details = restore["details"]["restore"]
    print(f"failback restore: {json.dumps({k: v for k, v in details.items() if k != 'attempts'})}; "
          f"database {state['db_size']} bytes; progress phases seen {seen['progress_phases']}")
    assert details["source"] == "restore", json.dumps(details, indent=1)
    # chosen on estimates: rewind ruled out (no data), restore cheaper than a full copy
    assert details["order"][0] == "restore" and "gone" in details["unusable"]["rewind"], details
    assert details["estimates"]["restore"] < details["estimates"]["basebackup"], details["estimates"]
    assert details["backup"] and details["local_bytes"] > 0
    # across regions: the WAL written since the failover (from the start of the segment where the
    # timelines forked) and the segment the archive lacked, not the database
    since_failover = lsn(details["caught_up_lsn"]) - lsn(fork)
    assert "1 more from the active service" in details["reason"], details["reason"]
    assert details["cross_region_bytes"] <= since_failover + 2 * 16 * 2**20, (details, fork)
    assert details["cross_region_bytes"] < state["db_size"], (details, state["db_size"])
    step = next(s for s in restore["steps"] if s["name"] == "restore")
    assert "restore" in step["detail"] and "rewind" in step["detail"], step


def wal_archived_after_a_backup(p: RunningPlatform) -> None:
    """A backup of the primary on its current timeline, then complete segments written and
    archived after it: one of them can go missing from the archive without the backup needing it."""
    wait_backup_on_current_timeline(p, PROJECT, PRI, PRI_CLOUD, timeout=180)
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10, autocommit=True) as conn:
        # ~50 MB of WAL: complete segments after the backup (the service's user may not switch WAL)
        conn.execute("INSERT INTO bulk SELECT g, md5(g::text) || md5((g * 7)::text) "
                     "FROM generate_series(1, 400000) g")
        done = str(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn() - 16777216)").fetchone()[0])
        wait_for("the segments written after the backup to be archived",
                 lambda: str(conn.execute("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                             .fetchone()[0]) >= done, timeout=120, interval=0.5)


def test_failback_with_the_disk_kept_takes_what_the_archive_lacks_from_the_old_data(platform: RunningPlatform):
    p = platform
    wal_archived_after_a_backup(p)
    outage_and_failover(p)
    # the disk survived: the segment the archive lacks is in the old data directory kept aside,
    # wholly before the fork, and need not cross regions again
    fork = drop_newest_archived_segment_before_the_fork(p)
    restore, _ = failback(p, source="restore")
    details = restore["details"]["restore"]
    assert details["source"] == "restore", json.dumps(details, indent=1)
    assert "1 more from the old data directory kept aside" in details["reason"], details["reason"]
    assert "from the active service" not in details["reason"], details["reason"]
    since_failover = lsn(details["caught_up_lsn"]) - lsn(fork)
    assert details["cross_region_bytes"] <= since_failover + 16 * 2**20, (details, fork)


def test_failback_with_a_corrupt_repository_falls_back_to_a_full_copy(platform: RunningPlatform):
    p = platform
    outage_and_failover(p)
    lose_primary_disk(p)
    stanza = region_dir(p, PRI_CLOUD) / "backrest" / "repo" / "backup" / cluster_id(PROJECT, PRI)
    for f in ("backup.info", "backup.info.copy"):
        (stanza / f).write_text("this is not a pgBackRest file\n")
    restore, _ = failback(p)
    details = restore["details"]["restore"]
    assert details["source"] == "basebackup", json.dumps(details, indent=1)
    tried = next((a for a in details["attempts"] if a["source"] == "restore"), None)
    why = details["unusable"].get("restore") or (tried or {}).get("reason")
    assert why and "repository" in why and (tried is None or not tried["ok"]), details
    assert details["cross_region_bytes"] >= state["db_size"] / 2
    step = next(s for s in restore["steps"] if s["name"] == "restore")
    assert "basebackup" in step["detail"] and "restore:" in step["detail"], step
    # the repository problem is reported on the service (the region re-reads its repository every
    # 30 s, and the primary, a writer again, fails to back up into it), and writes go on
    def reported() -> dict | None:
        with p.api() as c:
            arch = c.get(f"/v1/project/{PROJECT}/service/{PRI}/backups").json()["wal_archive"]
        return arch if (not arch["ok"] or arch["message"] or arch["last_backup_error"]) else None

    arch = wait_for("the corrupt repository to be reported", reported, timeout=90)
    print(f"reported: {arch['message'] or arch['last_backup_error']}")
    assert p.service(PROJECT, PRI)["state"] == "RUNNING"


@pytest.fixture(scope="module", autouse=True)
def _cleanup(platform: RunningPlatform):
    yield
    for name in (REC, PRI):
        platform.avn("service", "terminate", name, "--project", PROJECT, "--force", check=False)
