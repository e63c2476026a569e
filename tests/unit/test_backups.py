"""Backups and failback sources: the pure parts (pgBackRest configuration and output, the backup
schedule, which backup a failback may restore, progress parsing) and the API's view of them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pgcrdr.agent import backrest
from pgcrdr.agent.backups import next_backup
from pgcrdr.agentapi.models import (
    BackupInfo,
    BackupPolicy,
    BackupStatus,
    ClusterSpec,
    ClusterStatus,
    Endpoint,
    WalArchiveStatus,
)
from pgcrdr.agent.patroni import NodePaths, render_patroni_config
from pgcrdr.agent.rebuild import copy_wal_segment, kb_progress, kept_wal_segments, strip_recovery_settings
from pgcrdr.agentapi.lsn import format_lsn, parse_lsn
from pgcrdr.controlplane.decide import Observation, backup_policy, service_view
from tests.unit import test_api_crdr as crdr_api

LAYOUT = backrest.RepoLayout(Path("/r/backrest"))


def info_json(stanza: str = "c1", code: int = 0, backups: list[dict] | None = None) -> list[dict]:
    return [{"name": stanza, "status": {"code": code, "message": "ok" if code == 0 else "missing stanza path",
                                        "lock": {"backup": {"held": False}}},
             "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": "000000010000000000000009"}],
             "backup": backups or []}]


def bk(label: str, typ: str, wal_start: str, lsn_stop: str, stop: int = 1_700_000_000) -> dict:
    return {"label": label, "type": typ, "timestamp": {"start": stop - 10, "stop": stop},
            "archive": {"start": wal_start, "stop": wal_start}, "lsn": {"start": "0/2000028", "stop": lsn_stop},
            "info": {"size": 30_000_000, "delta": 1000, "repository": {"size": 4_000_000, "delta": 100}},
            "error": False}


def test_config_has_one_stanza_per_cluster_and_repository_options_from_the_environment():
    conf = backrest.render_conf(LAYOUT, {}, {"c1": 2, "c2": 14})
    assert "repo1-path=/r/backrest/repo" in conf and "[c1]\nrepo1-retention-full=2" in conf
    assert "[c2]\nrepo1-retention-full=14" in conf
    opts = backrest.repo_options_from_env("local-us-east1", {
        "PGCRDR_BACKREST_REPO_LOCAL_US_EAST1": "repo1-type=s3, repo1-s3-bucket=dr-backups,repo1-path=/pg"})
    assert opts == {"repo1-type": "s3", "repo1-s3-bucket": "dr-backups", "repo1-path": "/pg"}
    s3 = backrest.render_conf(LAYOUT, opts, {"c1": 2})
    assert "repo1-type=s3" in s3 and "repo1-path=/pg" in s3 and "repo1-path=/r/backrest/repo" not in s3
    assert backrest.repository_description(LAYOUT, opts) == "s3://dr-backups/pg"
    with pytest.raises(ValueError, match="repo1-KEY=VALUE"):
        backrest.repo_options_from_env("x", {"PGCRDR_BACKREST_REPO_X": "compress-type=none"})


def test_wal_names_and_segments():
    assert backrest.wal_name(1, 2) == "000000010000000000000002"
    assert backrest.wal_name(3, 0x100 + 5) == "000000030000000100000005"
    assert backrest.wal_segno("000000030000000100000005") == (3, 0x105)
    assert backrest.segno_of("0/2000028") == 2 and backrest.segno_of("1/5000000") == 0x105
    assert format_lsn(parse_lsn("1/5000A28")) == "1/5000A28"


def test_info_parsing_and_the_backup_a_failback_may_restore():
    data = info_json(backups=[bk("F1", "full", "000000010000000000000002", "0/2000138", 1_700_000_000),
                              bk("I1", "incr", "000000010000000000000009", "0/9000100", 1_700_000_100),
                              bk("F2", "full", "00000002000000000000000C", "0/C000100", 1_700_000_200)])
    backups = backrest.parse_backups(data, "c1")
    assert [(b.label, b.type, b.timeline) for b in backups] == [("F1", "full", 1), ("I1", "incr", 1),
                                                                ("F2", "full", 2)]
    assert backups[0].stop_time == "2023-11-14T22:13:20Z" and backups[0].size == 30_000_000
    assert backrest.parse_backups(data, "other") == []
    assert backrest.stanza_problem(data, "c1") is None
    assert backrest.stanza_problem(info_json(code=1), "c1") == "missing stanza path"
    assert backrest.stanza_problem(info_json(code=2), "c1") is None  # a new stanza has no backup yet
    assert backrest.archive_range(data, "c1") == ("000000010000000000000001", "000000010000000000000009")
    # the writer failed on timeline 1, forked at 0/A000000: the incremental is the newest usable one
    assert backrest.restorable_backup(backups, 1, "0/A000000").label == "I1"
    # a backup that ended after the fork holds divergent data: not usable
    assert backrest.restorable_backup(backups, 1, "0/5000000").label == "F1"
    assert backrest.restorable_backup(backups, 1, "0/1000000") is None
    assert backrest.restorable_backup(backups, 3, "0/F000000") is None  # nothing on that timeline


def test_schedule_full_first_on_each_timeline_then_incrementals():
    policy = BackupPolicy(full_interval_s=86400, incr_interval_s=3600)
    now = time.time()

    def b(label, typ, age, tl=1):
        stop = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - age))
        return BackupInfo(label=label, type=typ, start_time=stop, stop_time=stop, size=1, delta=1, repo_size=1,
                          repo_delta=1, timeline=tl)

    assert next_backup(policy, 1, [], now, None) == "full"
    assert next_backup(policy, 1, [b("F", "full", 60)], now, None) is None
    assert next_backup(policy, 1, [b("F", "full", 4000)], now, None) == "incr"
    assert next_backup(policy, 1, [b("F", "full", 90000), b("I", "incr", 60)], now, None) == "full"
    # a writer promoted to a new timeline starts its own chain
    assert next_backup(policy, 2, [b("F", "full", 60, tl=1)], now, None) == "full"
    # a failure is retried, not hammered
    assert next_backup(policy, 1, [], now, last_failure=now - 5) is None
    assert next_backup(policy, 1, [], now, last_failure=now - 300) == "full"
    assert next_backup(BackupPolicy(enabled=False), 1, [], now, None) is None
    assert next_backup(policy, None, [], now, None) is None


def test_progress_and_recovery_settings_parsing():
    out = "pg_rewind: servers diverged\n  1024/20480 kB (5%) copied\r20480/20480 kB (100%) copied\npg_rewind: Done!"
    assert kb_progress(out) == (20480 * 1024, 20480 * 1024)
    assert kb_progress("nothing") is None
    auto = ("# Do not edit\nwork_mem = '8MB'\n\n# Recovery settings generated by pgBackRest restore on x\n"
            "restore_command = 'pgbackrest --stanza=c1 archive-get %f \"%p\"'\n")
    assert strip_recovery_settings(auto) == "# Do not edit\nwork_mem = '8MB'\n\n"


def test_every_node_archives_to_its_region_and_keeps_recent_wal():
    from pgcrdr.agentapi.models import TLSMaterial

    spec = ClusterSpec(cluster="c1", node_count=1, superuser_password="a", replication_password="b",
                       rewind_password="c", tls=TLSMaterial(ca_cert_pem="", cert_pem="", key_pem=""))
    paths = NodePaths(*(Path(f"/x/{n}") for n in ("data", "sock", "log", "pgpass", "crt", "key", "ca")))
    cmd = backrest.archive_command(LAYOUT, "c1", Path("/x/data"))
    cfg = render_patroni_config(spec, "c1-1", pg_port=1, rest_port=2, etcd_port=3, paths=paths,
                                pg_bin_dir=Path("/bin"), archive_command=cmd)
    params = cfg["postgresql"]["parameters"]
    assert params["archive_mode"] == "on" and params["archive_timeout"] == "60s"
    assert params["archive_command"].endswith("--stanza=c1 --pg1-path=/x/data archive-push %p")
    assert params["wal_keep_size"] == "64MB"


def test_a_new_writer_is_running_only_once_it_has_a_backup(api):
    crdr_api.create(api, "pg-a")
    svc = api.store.get_service("pgcrdr", "pg-a")
    ep = Endpoint(host="127.0.0.1", port=1)
    repo = BackupStatus(repository="/r", stanza=svc.cluster)
    st = ClusterStatus(cluster=svc.cluster, region="r", ready=True, primary=ep, replica=ep,
                       generation=svc.generation, backup=repo)
    view = service_view(svc, Observation(st))
    assert (view.state, view.reason) == ("REBUILDING", "waiting for the first backup")
    one = BackupInfo(label="F", type="full", start_time="2026-01-01T00:00:00Z", stop_time="2026-01-01T00:00:01Z",
                     size=10, delta=10, repo_size=2, repo_delta=2, timeline=1)
    st2 = st.model_copy(update={"backup": repo.model_copy(update={"backups": [one]})})
    assert service_view(svc, Observation(st2)).state == "RUNNING"
    # once running, a broken repository is reported but changes nothing else
    running = svc.model_copy(update={"ever_ready": True})
    broken = st.model_copy(update={"backup": repo.model_copy(update={"ok": False, "message": "repository: gone"})})
    view = service_view(running, Observation(broken))
    assert view.state == "RUNNING" and "backups: repository: gone" in view.message
    assert backup_policy("business-4", {}).retention_full == 14
    assert backup_policy("startup-4", {"PGCRDR_BACKUPS": "off"}).enabled is False


def test_backups_api_lists_the_region_repository(api):
    crdr_api.create(api, "pg-b")
    crdr_api.set_running(api, "pg-b")
    svc = api.store.get_service("pgcrdr", "pg-b")
    one = BackupInfo(label="20260101-000000F", type="full", start_time="2026-01-01T00:00:00Z",
                     stop_time="2026-01-01T00:00:09Z", size=12345, delta=12345, repo_size=99, repo_delta=99,
                     timeline=1)
    backup = BackupStatus(repository="/var/lib/pgcrdr/regions/eu/backrest/repo", stanza=svc.cluster, backups=[one],
                          archive=WalArchiveStatus(archived_count=3, last_archived_wal="000000010000000000000003",
                                                   last_archived_time="2026-01-01T00:01:00Z"))
    api.store.update_service("pgcrdr", "pg-b", lambda cur: cur.model_copy(
        update={"status": cur.status.model_copy(update={"backup": backup})}))
    body = api.get(f"{crdr_api.P}/service/pg-b/backups").json()
    assert body["backups"] == [{"backup_name": "20260101-000000F", "backup_time": "2026-01-01T00:00:09Z",
                                "data_size": 12345, "backup_type": "full",
                                "storage_location": "local-europe-west1:/var/lib/pgcrdr/regions/eu/backrest/repo"}]
    assert body["wal_archive"]["last_archived_wal"] == "000000010000000000000003"
    assert body["pitr"] == {"earliest_recovery_time": "2026-01-01T00:00:09Z",
                            "latest_recovery_time": "2026-01-01T00:01:00Z"}
    assert api.get(f"{crdr_api.P}/service/pg-b").json()["service"]["backups"] == body["backups"]
    assert api.get(f"{crdr_api.P}/service/nope/backups").status_code == 404


def test_failback_source_is_validated_and_changes_nothing(api):
    crdr_api.create(api, "pg-c")
    crdr_api.create(api, "pg-c-dr", cloud="local-us-east1", dr_for="pg-c")
    before = [(s["service_name"], s["state"], s["disaster_recovery_role"])
              for s in api.get(f"{crdr_api.P}/service").json()["services"]]
    bad = api.put(f"{crdr_api.P}/service/pg-c", json={"disaster_recovery_role": "passive", "failback_source": "tape"})
    assert bad.status_code == 400 and "failback_source must be one of" in bad.json()["message"]
    alone = api.put(f"{crdr_api.P}/service/pg-c", json={"failback_source": "restore"})
    assert alone.status_code == 400 and "passive" in alone.json()["message"]
    crdr_api.set_running(api, "pg-c")
    crdr_api.set_running(api, "pg-c-dr", standby=True)
    wrong = api.put(f"{crdr_api.P}/service/pg-c",
                    json={"disaster_recovery_role": "passive", "failback_source": "restore"})
    # the role change itself is refused first, with what to do instead
    assert wrong.status_code in (400, 409) and "failed" in wrong.json()["message"], wrong.text
    after = [(s["service_name"], s["state"], s["disaster_recovery_role"])
             for s in api.get(f"{crdr_api.P}/service").json()["services"]]
    assert [x[2] for x in after] == [x[2] for x in before]


def test_first_wal_segment_at_or_after_a_fork(tmp_path):
    from pgcrdr.agent.wal import first_segment_at_or_after

    for name in ("000000010000000000000008", "00000001000000000000000B", "00000002000000000000000A",
                 "00000001000000000000000C.partial", "archive_status"):
        (tmp_path / name).write_text("")
    seg = 16 * 1024 * 1024
    assert first_segment_at_or_after(tmp_path, 1, 0xA * seg) == 0xB * seg
    assert first_segment_at_or_after(tmp_path, 1, 0x8 * seg + 5) == 0x8 * seg  # its own segment is there
    assert first_segment_at_or_after(tmp_path, 1, 0xD * seg) is None
    assert first_segment_at_or_after(tmp_path / "missing", 1, 0) is None


def test_failback_sources_are_tried_cheapest_first():
    from pgcrdr.agent.rebuild import order_by_estimate

    default = ["rewind", "restore", "basebackup"]
    # pg_rewind copies the active's whole pg_wal: a local restore can be cheaper across regions
    assert order_by_estimate(default, {"rewind": 250, "restore": 64, "basebackup": 1200}) == \
        ["restore", "rewind", "basebackup"]
    assert order_by_estimate(default, {"rewind": 30, "restore": 64, "basebackup": 1200}) == default
    # no estimate (old data gone, repository unreadable): tried after, in the usual order
    assert order_by_estimate(default, {"basebackup": 1200}) == ["basebackup", "rewind", "restore"]
    assert order_by_estimate(default, {}) == default
    assert order_by_estimate(default, {"rewind": 5, "restore": 5}) == default  # ties keep the order


def test_a_failback_restore_takes_from_the_kept_old_data_only_whole_segments_before_the_fork(tmp_path):
    seg = backrest.WAL_SEGMENT
    # before the fork's segment and before the end of the kept copy's valid WAL
    assert list(kept_wal_segments(5, 9, format_lsn(12 * seg + 100))) == [5, 6, 7, 8]
    assert list(kept_wal_segments(5, 9, format_lsn(7 * seg + 100))) == [5, 6]  # segment 7 partly valid
    assert list(kept_wal_segments(5, 9, format_lsn(7 * seg))) == [5, 6]
    assert list(kept_wal_segments(5, 9, format_lsn(3 * seg))) == []
    assert list(kept_wal_segments(5, 9, None)) == []
    owned: list[Path] = []
    src, dest = tmp_path / "kept", tmp_path / "pg_wal"
    src.mkdir()
    dest.mkdir()
    (src / "whole").write_bytes(b"\1" * seg)
    (src / "short").write_bytes(b"\1" * 100)
    assert copy_wal_segment(src / "whole", dest / "whole", owned.append)
    assert (dest / "whole").read_bytes() == b"\1" * seg and owned == [dest / ".whole.tmp"]
    assert not copy_wal_segment(src / "short", dest / "short", owned.append)
    assert not copy_wal_segment(src / "missing", dest / "missing", owned.append)
    assert sorted(f.name for f in dest.iterdir()) == ["whole"]


def test_newer_timelines_in_a_wal_directory(tmp_path):
    from pgcrdr.agent.wal import newer_timelines

    for name in ("000000010000000000000006", "000000020000000000000007", "00000003000000000000000A.partial",
                 "00000002.history", "archive_status"):
        (tmp_path / name).write_text("")
    assert newer_timelines(tmp_path, 1) == [2]
    assert newer_timelines(tmp_path, 2) == []


def test_pgbackrest_conf_is_written_while_the_region_lock_is_held(tmp_path):
    """put_spec holds the region lock while it registers a cluster (which writes the conf); a
    backup thread writing the conf must never wait for that lock while holding the conf lock
    (that inversion deadlocked an agent creating 25 clusters)."""
    import threading

    from pgcrdr.agent.runtime import RegionRuntime
    from pgcrdr.config import Settings

    settings = Settings.from_env(home=tmp_path / "home")
    rt = RegionRuntime(settings, settings.regions[0])
    rt.prepare_dirs()
    done = threading.Event()
    with rt.clusters.lock:  # another thread (put_spec) holds the region lock...
        t = threading.Thread(target=lambda: (rt.backups.write_conf(), done.set()), daemon=True)
        t.start()
        assert done.wait(10), "writing pgbackrest.conf waited for the region lock"
    assert rt.backups.repo.conf.exists()
