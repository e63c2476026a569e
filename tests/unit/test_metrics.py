"""/metrics: parsed with prometheus_client's own parser, the expected families, a pair's lag,
backups and the WAL archive, and operation histograms from the store's finished operations."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pgcrdr.agentapi.models import BackupInfo, BackupStatus, ClusterStatus, Endpoint, LsnInfo, WalArchiveStatus

P = "/v1/project/pgcrdr"
BODY = {"service_type": "pg", "plan": "startup-4", "user_config": {}}


def scrape(api) -> dict:
    r = api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams, family, sample_name=None, **labels):
    for s in fams[family].samples:
        if (sample_name is None or s.name == sample_name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no {family} sample with {labels}")


def _status(name, standby, current=None, replay=None, lag_s=None, backups=(), failed=0):
    ep = Endpoint(host="127.0.0.1", port=1)
    lsn = LsnInfo(node=f"{name}-1", in_recovery=standby, current_lsn=current, replay_lsn=replay, lag_seconds=lag_s)
    backup = BackupStatus(repository="/r", stanza=name, backups=list(backups),
                          archive=WalArchiveStatus(archived_count=7, failed_count=failed))
    return ClusterStatus(cluster=name, region="r", ready=True, standby=standby, primary=ep, replica=ep,
                         lsn=lsn, backup=backup, generation=99)


def test_metrics_need_a_token(api):
    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 401


def test_families_service_state_role_lag_backups_and_operations(api):
    api.post(f"{P}/service", json={**BODY, "service_name": "pg-pri", "cloud": "local-europe-west1"})
    r = api.post(f"{P}/service", json={**BODY, "service_name": "pg-rec", "cloud": "local-us-east1",
                                       "service_integrations": [{"integration_type": "disaster_recovery",
                                                                 "source_service": "pg-pri"}]})
    assert r.status_code == 200, r.text
    bk = BackupInfo(label="b1", type="full", start_time="2020-01-01T00:00:00Z", stop_time="2020-01-01T00:01:00Z",
                    size=1, delta=1, repo_size=1, repo_delta=1)

    def running(status):
        return lambda cur: cur.model_copy(update={"state": "RUNNING", "ever_ready": True, "status": status,
                                                  "status_time": 1.0})

    api.store.update_service("pgcrdr", "pg-pri", running(_status("pg-pri", False, current="0/3000100",
                                                                 backups=[bk], failed=2)))
    api.store.update_service("pgcrdr", "pg-rec", running(_status("pg-rec", True, replay="0/3000000", lag_s=0.25)))
    (setup,) = api.store.running_operations()

    fams = scrape(api)
    expected = {"pgcrdr_service_state", "pgcrdr_service_dr_role", "pgcrdr_service_info",
                "pgcrdr_service_status_age_seconds", "pgcrdr_backup_last_age_seconds", "pgcrdr_backup_repository_ok",
                "pgcrdr_wal_archive_failures", "pgcrdr_wal_archived", "pgcrdr_replication_lag_bytes",
                "pgcrdr_replication_lag_seconds", "pgcrdr_operation_duration_seconds",
                "pgcrdr_operation_write_pause_seconds", "pgcrdr_operations_running"}
    assert expected <= set(fams), expected - set(fams)
    assert value(fams, "pgcrdr_service_state", service="pg-pri", state="RUNNING") == 1
    assert value(fams, "pgcrdr_service_state", service="pg-pri", state="REBUILDING") == 0
    assert value(fams, "pgcrdr_service_dr_role", service="pg-rec", role="passive") == 1
    assert value(fams, "pgcrdr_replication_lag_bytes", pair="pg-pri", service="pg-rec") == 0x100
    assert value(fams, "pgcrdr_replication_lag_seconds", pair="pg-pri", service="pg-rec") == 0.25
    assert value(fams, "pgcrdr_wal_archive_failures", service="pg-pri") == 2
    assert value(fams, "pgcrdr_backup_last_age_seconds", service="pg-pri") > 3600
    assert fams["pgcrdr_wal_archive_failures"].type == "counter"
    assert value(fams, "pgcrdr_operations_running", kind="setup") == 1
    assert fams["pgcrdr_operation_duration_seconds"].samples == []  # nothing has ended yet

    api.store.put_operation(setup.model_copy(update={"state": "done", "create_time": "2026-01-01T00:00:00Z",
                                                     "finish_time": "2026-01-01T00:00:12Z", "write_pause_s": 0.4}))
    fams = scrape(api)
    hist = fams["pgcrdr_operation_duration_seconds"]
    assert hist.type == "histogram"
    assert value(fams, "pgcrdr_operation_duration_seconds", "pgcrdr_operation_duration_seconds_count",
                 kind="setup", state="done") == 1
    assert value(fams, "pgcrdr_operation_duration_seconds", "pgcrdr_operation_duration_seconds_sum",
                 kind="setup", state="done") == 12
    assert value(fams, "pgcrdr_operation_duration_seconds", "pgcrdr_operation_duration_seconds_bucket",
                 kind="setup", state="done", le="10.0") == 0
    assert value(fams, "pgcrdr_operation_duration_seconds", "pgcrdr_operation_duration_seconds_bucket",
                 kind="setup", state="done", le="20.0") == 1
    assert value(fams, "pgcrdr_operation_write_pause_seconds", "pgcrdr_operation_write_pause_seconds_bucket",
                 kind="setup", le="0.5") == 1
    assert "pgcrdr_operations_running" not in {s.name for s in fams["pgcrdr_operations_running"].samples}
