"""The drill's pure parts: what it refuses, the fork names, the progress it reads from the API,
the figures it computes, and the report's text, Markdown and JSON."""

from __future__ import annotations

import json

from pgcrdr.drill.outage import kill_order
from pgcrdr.drill.plan import (
    MOVES,
    fork_backup_wait,
    fork_names,
    node_progress,
    operation_progress,
    peer_refusal,
    refusal,
)
from pgcrdr.drill.report import (
    DrillReport,
    Phase,
    Writes,
    as_markdown,
    as_text,
    history_lines,
    longest_gap,
    move_report,
    record_duration,
    rto,
    summarize,
)

DR_OK = {"disaster_recovery_kind": "primary", "peer_service": "pg-a-dr", "operation": None,
         "disaster_recovery_role": "active", "state": "RUNNING"}

FAILOVER_OP = {
    "operation_id": "f1", "kind": "failover", "state": "done", "create_time": "2026-11-30T10:00:00Z",
    "finish_time": "2026-11-30T10:00:04.5Z", "write_pause_s": 3.9, "message": None,
    "data_loss": {"known": False, "bytes": None, "lower_bound_bytes": 120, "divergent_commits": 2},
    "steps": [{"name": "record_lsn", "state": "done", "duration_s": 0.4},
              {"name": "promote", "state": "done", "duration_s": 2.0}],
    "details": {},
}
RESTORE_OP = {
    "operation_id": "r1", "kind": "failback_restore", "state": "done", "create_time": "2026-11-30T10:01:00Z",
    "finish_time": "2026-11-30T10:01:30Z", "write_pause_s": None, "data_loss": None, "steps": [],
    "details": {"restore": {"source": "rewind", "cross_region_bytes": 3 * 2**20}},
}


def test_refusals_say_what_to_do():
    assert refusal("pg-x", None, None) == "Service pg-x does not exist"
    solo = {**DR_OK, "peer_service": None, "disaster_recovery_kind": None}
    assert "not part of a CRDR pair" in (refusal("pg-a", {}, solo) or "")
    rec = {**DR_OK, "disaster_recovery_kind": "recovery", "peer_service": "pg-a"}
    assert refusal("pg-a-dr", {}, rec) == ("pg-a-dr is the recovery service of the pair pg-a; name the pair by "
                                           "its primary: pg-a")
    busy = {**DR_OK, "operation": {"kind": "switchover"}}
    assert "A switchover operation is already running on the pair pg-a" in (refusal("pg-a", {}, busy) or "")
    failed = {**DR_OK, "disaster_recovery_role": "failed", "state": "POWEROFF"}
    assert "not in its starting state (pg-a is failed, POWEROFF)" in (refusal("pg-a", {}, failed) or "")
    assert refusal("pg-a", {}, DR_OK) is None
    assert peer_refusal({"service_name": "r", "disaster_recovery_role": "passive", "state": "RUNNING"}) is None
    assert "needs it passive and RUNNING" in (peer_refusal(
        {"service_name": "r", "disaster_recovery_role": "passive", "state": "REBUILDING"}) or "")


def test_the_cycles_are_the_documented_requests():
    failover = [(m.side, m.role, m.kind) for m in MOVES["failover"] if not isinstance(m, str)]
    assert MOVES["failover"][0] == "outage"
    assert failover == [("primary", "failed", "failover"), ("primary", "passive", "failback_restore"),
                        ("primary", "active", "failback_promote")]
    assert [(m.side, m.role) for m in MOVES["switchover"] if not isinstance(m, str)] == [
        ("recovery", "active"), ("primary", "active")]


def test_fork_names_fit_a_service_name():
    assert fork_names("pg-a", "1f2e") == ("pg-a-drill-1f2e", "pg-a-drill-1f2e-dr")
    long = "p" + "-x" * 40
    pri, rec = fork_names(long, "abcd")
    assert len(rec) <= 64 and rec.endswith("-drill-abcd-dr") and not pri.startswith("-") and "--" not in rec


def test_progress_is_read_from_the_api():
    op = {"steps": [{"name": "preserve", "state": "done"}, {"name": "restore", "state": "running",
                                                          "detail": "rebuilding n1: basebackup 40%"},
                    {"name": "rebuild_passive", "state": "pending"}]}
    assert operation_progress(op) == (1, 3, "restore: rebuilding n1: basebackup 40%")
    assert operation_progress(None) == (0, 0, "")
    svc = {"node_states": [{"progress_updates": [
        {"phase": "basebackup", "current": 30, "max": 100, "completed": False},
        {"phase": "prepare", "current": 1, "max": 1, "completed": True}]},
        {"progress_updates": [{"phase": "stream", "current": 80, "max": 100, "completed": False}]}]}
    assert node_progress(svc) == (30, 100, "basebackup")
    assert node_progress({"node_states": []}) == (0, 0, "")
    nodes = {"node_states": [{"name": "n1", "role": "master"}, {"name": "n2", "role": "standby"}]}
    assert kill_order(nodes) == ["n2", "n1"]  # the writer last


def test_rto_and_the_client_gap():
    acks = [1.0, 1.1, 1.2, 5.0, 5.1, 9.0]
    assert rto(1.25, acks) == 3.75
    assert rto(9.5, acks) is None
    # a move requested at 1.3 and done at 4.0: from the last write before it to the first after it
    assert longest_gap(acks, 1.3, 4.0) == 3.8
    assert longest_gap(acks, 4.5, 6.0) == 3.9  # 5.1 -> 9.0 inside the window
    assert longest_gap(acks, 0.5, 2.0) is None  # no write before the request
    assert longest_gap(acks, 8.0, 9.5) is None  # none after the end yet


def test_figures_come_from_the_records():
    assert record_duration(FAILOVER_OP) == 4.5
    assert record_duration({"create_time": "2026-11-30T10:00:00Z", "finish_time": None}) is None
    m = move_report("failover", FAILOVER_OP, client_gap_s=4.2)
    assert (m.write_pause_s, m.duration_s, m.client_gap_s, m.steps_s) == (3.9, 4.5, 4.2, 2.4)
    assert m.data_loss == FAILOVER_OP["data_loss"] and m.cross_region_bytes is None
    assert [(s.name, s.duration_s) for s in m.steps] == [("record_lsn", 0.4), ("promote", 2.0)]
    r = move_report("failback restore", RESTORE_OP, None)
    assert (r.cross_region_bytes, r.restore_source, r.data_loss) == (3 * 2**20, "rewind", None)
    report = summarize(DrillReport(project="p", pair="pg-a", kind="failover", in_place=False, started="t",
                                   moves=[m, r]))
    assert report.data_given_up == FAILOVER_OP["data_loss"] and report.cross_region_bytes == 3 * 2**20


def _report() -> DrillReport:
    return summarize(DrillReport(
        project="pgcrdr", pair="pg-a", kind="failover", in_place=False, forks=["pg-a-drill-1", "pg-a-drill-1-dr"],
        started="2026-11-30T10:00:00+00:00", duration_s=181.5, rto_s=6.25,
        phases=[Phase(name="fork pg-a in local-europe-west1", duration_s=30.0, detail="pg-a-drill-1"),
                Phase(name="remove the forks", state="done", duration_s=2.0)],
        moves=[move_report("failover", FAILOVER_OP, 4.2), move_report("failback restore", RESTORE_OP, None)],
        writes=Writes(acknowledged=900, failed=12, unknown=1, lost=2, checked_on="pg-a-drill-1")))


def test_the_report_as_text_markdown_and_json():
    r = _report()
    text = as_text(r)
    assert "failover drill of pgcrdr/pg-a on forks pg-a-drill-1, pg-a-drill-1-dr: done" in text
    assert "RTO:                 6.25 s" in text
    assert "unknown (the primary could not be asked); at least 120 B; 2 commits kept aside" in text
    assert "3145728 B (3.00 MiB)" in text
    assert "900 acknowledged, 12 failed, 1 unknown; acknowledged and lost: 2" in text
    assert "write pause 3.90 s (client saw 4.20 s)" in text and "operation f1" in text
    md = as_markdown(r)
    assert "| RTO (outage to first acknowledged write) | 6.25 s |" in md
    assert "| failover | done | 4 s | 2.40 s | 3.90 s | 4.20 s | `f1` |" in md
    assert "| failback restore | done | 30 s | - | - | - | `r1` |" in md
    back = DrillReport.model_validate(json.loads(r.model_dump_json()))
    assert back == r
    switch = DrillReport(project="p", pair="pg-a", kind="switchover", in_place=True, started="t")
    assert "RTO" not in as_text(switch) and "in place" in as_text(switch)
    assert "acknowledged and lost: not checked" in as_text(switch)


def test_history_lines():
    drills = [{"drill_id": "abc", "create_time": "2026-11-30T10:00:00Z", "kind": "failover", "in_place": False,
               "state": "done", "report": {"rto_s": 0.86, "writes": {"lost": 0}, "duration_s": 41.0}},
              {"drill_id": "def", "create_time": "2026-11-30T11:00:00Z", "kind": "switchover", "in_place": True,
               "state": "interrupted", "report": {}}]
    one, two = history_lines(drills)
    assert one.startswith("abc 2026-11-30T10:00:00Z failover fork done") and "RTO 0.86 s" in one
    assert "lost writes 0" in one and "duration 41.00 s" in one
    assert two.startswith("def 2026-11-30T11:00:00Z switchover in-place interrupted") and "RTO" not in two
    assert "lost writes -" in two


def test_a_fork_waits_for_a_backup_after_the_primary_became_the_writer_again():
    backups = [{"backup_time": "2026-11-30T10:00:00Z"}]
    back = [{"kind": "switchback", "to": "pg-a", "state": "done", "finish_time": "2026-11-30T10:05:00Z"}]
    assert "after its move back at 2026-11-30T10:05:00Z" in (fork_backup_wait("pg-a", backups, back) or "")
    later = [*backups, {"backup_time": "2026-11-30T10:05:30Z"}]
    assert fork_backup_wait("pg-a", later, back) is None
    assert fork_backup_wait("pg-a", backups, []) is None  # never moved: any backup will do
    undone = [{**back[0], "state": "undone"}]
    assert fork_backup_wait("pg-a", backups, undone) is None
    assert fork_backup_wait("pg-a", [], []) == "pg-a has no backup yet"
    # the agent's backup of the new timeline ended in the second the move ended (it waited for the
    # other side to stream after its promote step): counted from the promote step's end
    steps = [{"name": "promote", "finished": "2026-11-30T18:39:56Z"}, {"name": "wait_passive_in_sync",
                                                                        "finished": "2026-11-30T18:39:59Z"}]
    fast = [{"kind": "switchback", "to": "pg-a", "state": "done", "finish_time": "2026-11-30T18:39:59Z",
             "steps": steps}]
    assert fork_backup_wait("pg-a", [{"backup_time": "2026-11-30T18:39:59Z"}], fast) is None
    assert "after its move back at 2026-11-30T18:39:56Z" in (
        fork_backup_wait("pg-a", [{"backup_time": "2026-11-30T18:39:56Z"}], fast) or "")
