"""Forks (point-in-time recovery): the control plane's checks of a target time, the restore's
choice of backup, and the agent's decision to start a fork's nodes, as values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pgcrdr.agent.backrest import backup_before, recovery_target
from pgcrdr.agent.decide import ClusterObs, NodeObs, StartNode, StartProxy, decide
from pgcrdr.agent.rebuild import postmaster_status
from pgcrdr.agentapi.models import (
    BackupInfo,
    BackupStatus,
    ClusterStatus,
    Endpoint,
    RestoreSource,
    WalArchiveStatus,
)
from pgcrdr.agentapi.times import format_time, parse_time
from pgcrdr.controlplane.errors import Refused
from pgcrdr.controlplane.forks import fork_target_time
from tests.unit.test_agent_decide import primary, spec
from tests.unit.test_decide import svc

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)


def backup(label: str, stop: str, error: bool = False) -> BackupInfo:
    return BackupInfo(label=label, type="full", start_time=stop, stop_time=stop, size=1, delta=1, repo_size=1,
                      repo_delta=1, error=error)


def source(backups: list[BackupInfo], **kw: object) -> object:
    ep = Endpoint(host="h", port=1)
    st = ClusterStatus(cluster="s-1", region="c", primary=ep, replica=ep,
                       backup=BackupStatus(repository="/r", stanza="s-1", backups=backups,
                                           archive=WalArchiveStatus(last_archived_time="2026-11-30T11:50:00Z")))
    return svc(status=st, **kw)


BACKUPS = [backup("b1", "2026-11-30T10:00:00Z"), backup("b2", "2026-11-30T11:00:00Z")]


def test_no_target_means_now_and_a_target_inside_the_window_is_kept() -> None:
    src = source(BACKUPS)
    assert fork_target_time(src, None, NOW) == NOW  # type: ignore[arg-type]
    kept = fork_target_time(src, "2026-11-30T11:30:00+01:00", NOW)  # type: ignore[arg-type]
    assert kept == parse_time("2026-11-30T10:30:00Z")


@pytest.mark.parametrize("requested, words, says_window", [
    ("2026-11-30T13:00:00Z", "is in the future (now is 2026-11-30T12:00:00Z)", True),
    ("2026-11-30T09:00:00Z", "is before the oldest backup of s (ended 2026-11-30T10:00:00Z)", True),
    ("yesterday", "is not an RFC 3339 time", False),
    (5, "must be a string", False),
])
def test_bad_target_times_are_refused_saying_what_would_do(requested: object, words: str, says_window: bool) -> None:
    with pytest.raises(Refused) as e:
        fork_target_time(source(BACKUPS), requested, NOW)  # type: ignore[arg-type]
    assert e.value.status == 400
    assert words in e.value.message
    assert ("choose a time from 2026-11-30T10:00:00Z to now" in e.value.message) == says_window


def test_a_source_without_backups_cannot_be_forked_yet() -> None:
    with pytest.raises(Refused) as e:
        fork_target_time(source([]), None, NOW)  # type: ignore[arg-type]
    assert e.value.status == 409 and "has no backup yet" in e.value.message


def test_a_source_that_takes_no_writes_is_restored_up_to_the_end_of_its_archive() -> None:
    src = source(BACKUPS, powered=False)
    assert fork_target_time(src, None, NOW) == parse_time("2026-11-30T11:50:00Z")  # type: ignore[arg-type]
    with pytest.raises(Refused) as e:
        fork_target_time(src, "2026-11-30T11:55:00Z", NOW)  # type: ignore[arg-type]
    assert "is after the end of its archive (2026-11-30T11:50:00Z: it takes no writes)" in e.value.message


def test_the_restore_starts_from_the_newest_sound_backup_that_ended_before_the_target() -> None:
    bs = [*BACKUPS, backup("b3", "2026-11-30T11:30:00Z", error=True)]
    assert backup_before(bs, parse_time("2026-11-30T11:45:00Z")).label == "b2"  # type: ignore[union-attr]
    assert backup_before(bs, parse_time("2026-11-30T10:59:59Z")).label == "b1"  # type: ignore[union-attr]
    assert backup_before(bs, parse_time("2026-11-30T09:00:00Z")) is None
    assert recovery_target(parse_time("2026-11-30T13:00:00.5+01:00")) == "2026-11-30 12:00:00.500000+00"


def test_times_read_and_written_as_rfc_3339() -> None:
    assert parse_time("2026-11-30 12:00:00") == NOW  # no offset: UTC
    assert format_time(NOW) == "2026-11-30T12:00:00Z"
    assert format_time(NOW + timedelta(microseconds=5)) == "2026-11-30T12:00:00.000005Z"


FORK = spec(node_count=3, restore_from=RestoreSource(stanza="src-1", target_time="2026-11-30T12:00:00Z"))


def test_a_fork_starts_no_node_while_its_data_is_restored() -> None:
    d = decide(ClusterObs(spec=FORK, now=0.0, nodes=(), restoring=True))
    assert d.actions == [StartProxy()]
    assert "waiting for the restore from the backups of src-1" in d.reason


def test_a_fork_starts_its_empty_nodes_only_once_the_restored_node_leads() -> None:
    restored = NodeObs(index=1, name="pg1-1", has_data=True)
    d = decide(ClusterObs(spec=FORK, now=0.0, nodes=(restored,)))
    assert d.actions == [StartNode("pg1-1", 1), StartProxy()]
    assert "pg1-2 waits for the restored node to lead" in d.reason
    d = decide(ClusterObs(spec=FORK, now=0.0, nodes=(primary(1),), proxy_running=True))
    assert [a for a in d.actions if isinstance(a, StartNode)] == [StartNode("pg1-2", 2), StartNode("pg1-3", 3)]


def test_the_replay_is_over_when_the_postmaster_says_ready(tmp_path: Path) -> None:
    assert postmaster_status(tmp_path) is None
    pid = tmp_path / "postmaster.pid"
    pid.write_text("3940\n/data\n1796038556\n15020\n/run/s\n\n  1234567     32768\nstandby \n")
    assert postmaster_status(tmp_path) == "standby"
    pid.write_text(pid.read_text().replace("standby ", "ready   "))
    assert postmaster_status(tmp_path) == "ready"
