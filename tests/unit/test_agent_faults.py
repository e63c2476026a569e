"""Faults injected at the control plane's agent client: rules as values, the fault file, and
``AgentClient`` against a tiny local HTTP server (it tests the client's own fault logic, so the
server only records what reached it)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgcrdr.agentapi import faults
from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.agentapi.faults import FaultFile, FaultRule, matching_rule
from pgcrdr.cli.main import main as cli
from tests.unit.local_server import Server, local_server

REGION = "local-europe-west1"
NOW = 1_700_000_000.0


def rule(**kw: object) -> FaultRule:
    base: dict = {"region": REGION, "mode": "fail", "until": NOW + 60}
    base.update(kw)
    return FaultRule(**base)


# --- rules as values ------------------------------------------------------------------------

def test_a_rule_matches_its_region_while_active() -> None:
    r = rule()
    assert r.matches(REGION, "GET", "/health", NOW)
    assert not r.matches("local-us-east1", "GET", "/health", NOW)
    assert not r.matches(None, "GET", "/health", NOW)
    assert r.matches(REGION, "GET", "/health", NOW + 59.9)
    assert not r.matches(REGION, "GET", "/health", NOW + 60), "expired at until"


def test_method_and_path_filters() -> None:
    r = rule(methods=["post"], path_contains="/promote")
    assert r.matches(REGION, "POST", "/clusters/pg1/promote", NOW)
    assert not r.matches(REGION, "GET", "/clusters/pg1/promote", NOW)
    assert not r.matches(REGION, "POST", "/clusters/pg1/demote", NOW)
    assert rule(path_contains="/lsn").matches(REGION, "DELETE", "/clusters/x/lsn", NOW)


def test_the_newest_matching_rule_wins_and_expired_ones_are_skipped() -> None:
    slow = rule(mode="slow", delay_s=1)
    freeze_promote = rule(mode="freeze", path_contains="/promote")
    old = rule(mode="fail", until=NOW - 1)
    rules = [slow, freeze_promote, old]
    assert matching_rule(rules, REGION, "POST", "/clusters/a/promote", NOW) is freeze_promote
    assert matching_rule(rules, REGION, "GET", "/health", NOW) is slow
    assert matching_rule(rules, "other", "GET", "/health", NOW) is None
    assert matching_rule([old], REGION, "GET", "/health", NOW) is None


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        FaultRule(region=REGION, mode="explode", until=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rule(mode="slow", delay_s=-1)


# --- the file ----------------------------------------------------------------------------------

def test_inject_and_clear_round_trip(tmp_path: Path) -> None:
    path = faults.inject(tmp_path, rule(mode="slow", delay_s=2), now=NOW)
    assert path == tmp_path / "control" / "agent-faults.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    faults.inject(tmp_path, rule(region="local-us-east1"), now=NOW)
    faults.inject(tmp_path, rule(mode="freeze", until=NOW - 5), now=NOW - 10)  # already over at NOW
    got = faults.read_rules(path)
    assert [(r.region, r.mode) for r in got] == [(REGION, "slow"), ("local-us-east1", "fail"), (REGION, "freeze")]
    faults.inject(tmp_path, rule(mode="fail", lose_answer=True), now=NOW)  # drops the expired rule
    assert [(r.mode, r.lose_answer) for r in faults.read_rules(path)] == [
        ("slow", False), ("fail", False), ("fail", True)]
    assert faults.clear(tmp_path, REGION) == 2
    assert [r.region for r in faults.read_rules(path)] == ["local-us-east1"]
    assert faults.clear(tmp_path) == 1 and faults.read_rules(path) == []
    assert faults.clear(tmp_path / "nowhere") == 0
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "no temp file left"


def test_fault_file_reads_again_only_when_changed(tmp_path: Path) -> None:
    ff = FaultFile(faults.faults_path(tmp_path))
    assert ff.rules() == [] and ff.match(REGION, "GET", "/health") is None  # no file: no fault
    faults.inject(tmp_path, rule(until=time.time() + 60))
    first = ff.rules()
    assert len(first) == 1 and ff.rules() is first, "unchanged file: cached"
    faults.inject(tmp_path, rule(mode="slow", until=time.time() + 60))
    assert [r.mode for r in ff.rules()] == ["fail", "slow"]
    assert ff.match(REGION, "GET", "/health").mode == "slow"  # type: ignore[union-attr]
    assert ff.match(None, "GET", "/health") is None
    faults.faults_path(tmp_path).write_text("{not json")
    assert ff.rules() == [], "an unreadable file means no fault"
    faults.faults_path(tmp_path).unlink()
    assert ff.rules() == []


# --- AgentClient against a local server ------------------------------------------------------

@pytest.fixture()
def server() -> Iterator[Server]:
    with local_server(default=(200, {"region": REGION, "etcd_healthy": True, "clusters": 0})) as srv:
        yield srv


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path


def client(server: Server, home: Path, timeout: float = 5.0, region: str | None = REGION) -> AgentClient:
    return AgentClient(server.url, "tok", timeout=timeout, faults_file=faults.faults_path(home), region=region)


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    try:
        return fn(), time.monotonic() - t0
    except AgentError as exc:
        return exc, time.monotonic() - t0


def test_without_rules_requests_go_through(server: Server, home: Path) -> None:
    c = client(server, home)
    assert c.health().etcd_healthy and server.seen == [("GET", "/health")]
    plain = AgentClient(server.url, "tok")  # no fault file at all: as before
    assert plain.health().region == REGION
    faults.inject(home, rule(until=time.time() + 60))
    assert plain.health().region == REGION, "a client given no fault file ignores faults"
    other = client(server, home, region="local-us-east1")
    assert other.health().region == REGION, "a rule of another region does not apply"
    c.close(), plain.close(), other.close()


def test_fail_refuses_at_once_and_sends_nothing(server: Server, home: Path) -> None:
    faults.inject(home, rule(mode="fail", until=time.time() + 60))
    exc, took = timed(client(server, home).health)
    assert isinstance(exc, AgentError) and exc.status is None, exc
    assert "unreachable: connection refused (fault injected)" in str(exc)
    assert took < 0.5 and server.seen == []


def test_freeze_waits_until_the_rule_ends_then_times_out(server: Server, home: Path) -> None:
    until = time.time() + 0.4
    faults.inject(home, rule(mode="freeze", until=until))
    c = client(server, home, timeout=5)
    left = until - time.time()  # what is left of the rule when the call starts (a busy machine
    exc, took = timed(c.health)  # may spend a tenth of a second writing the rule and the client)
    assert isinstance(exc, AgentError) and exc.status is None and "unreachable: timed out" in str(exc), exc
    assert left - 0.05 <= took < 2.0 and server.seen == []
    assert client(server, home).health().region == REGION, "over once the rule ends"


def test_freeze_is_bounded_by_the_request_timeout(server: Server, home: Path) -> None:
    faults.inject(home, rule(mode="freeze", until=time.time() + 60))
    exc, took = timed(lambda: client(server, home)._request("GET", "/health", timeout=0.3))
    assert isinstance(exc, AgentError) and "unreachable: timed out" in str(exc)
    assert 0.25 <= took < 1.5 and server.seen == []
    exc, took = timed(client(server, home, timeout=0.3).health)  # the client's default timeout
    assert isinstance(exc, AgentError) and 0.25 <= took < 1.5


def test_slow_delays_then_sends(server: Server, home: Path) -> None:
    faults.inject(home, rule(mode="slow", delay_s=0.4, until=time.time() + 60, methods=["GET"]))
    res, took = timed(client(server, home).health)
    assert not isinstance(res, AgentError) and res.etcd_healthy
    assert took >= 0.4 and server.seen == [("GET", "/health")]
    _, took = timed(lambda: client(server, home)._request("POST", "/clusters/pg1/checkpoint"))  # not matched
    assert took < 0.3 and server.seen[-1] == ("POST", "/clusters/pg1/checkpoint")


def test_lost_answer_is_executed_then_reported_as_a_timeout(server: Server, home: Path) -> None:
    faults.inject(home, rule(mode="fail", lose_answer=True, until=time.time() + 60, path_contains="/kill"))
    exc, took = timed(lambda: client(server, home).kill_node("pg1", "pg1-1"))
    assert isinstance(exc, AgentError) and exc.status is None and "unreachable: timed out" in str(exc), exc
    assert server.seen == [("POST", "/clusters/pg1/nodes/pg1-1/kill")], "the agent did execute it"
    assert took < 1.0
    assert client(server, home).health().region == REGION, "other paths are untouched"


def test_lost_answer_of_a_frozen_agent_waits_for_the_timeout(server: Server, home: Path) -> None:
    faults.inject(home, rule(mode="freeze", lose_answer=True, until=time.time() + 60))
    exc, took = timed(client(server, home, timeout=0.4).health)
    assert isinstance(exc, AgentError) and "timed out" in str(exc)
    assert server.seen == [("GET", "/health")] and 0.35 <= took < 2.0


def test_rules_written_while_the_client_lives_apply_to_its_next_request(server: Server, home: Path) -> None:
    c = client(server, home)
    assert c.health().region == REGION
    faults.inject(home, rule(mode="fail", until=time.time() + 60))
    with pytest.raises(AgentError, match="fault injected"):
        c.health()
    faults.clear(home, REGION)
    assert c.health().region == REGION
    faults.inject(home, rule(mode="fail", until=time.time() + 0.2))
    time.sleep(0.3)
    assert c.health().region == REGION, "an expired rule no longer applies"


# --- the operator CLI --------------------------------------------------------------------------

def test_cli_injects_and_clears_agent_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCRDR_REGIONS", raising=False)
    runner = CliRunner()
    home = tmp_path / "home"
    res = runner.invoke(cli, ["drill", "agent-fault", REGION, "--home", str(home), "--mode", "slow", "--delay", "2.5",
                              "--seconds", "30", "--path-contains", "/promote", "--method", "post"])
    assert res.exit_code == 0, res.output
    assert "wait 2.5 s" in res.output and "--clear" in res.output
    (r,) = faults.read_rules(faults.faults_path(home))
    assert (r.region, r.mode, r.delay_s, r.methods, r.path_contains, r.lose_answer) == (
        REGION, "slow", 2.5, ["POST"], "/promote", False)
    assert 25 < r.until - time.time() <= 30
    res = runner.invoke(cli, ["drill", "agent-fault", REGION, "--home", str(home), "--mode", "freeze",
                              "--lose-answer"])
    assert res.exit_code == 0, res.output
    assert [x.mode for x in faults.read_rules(faults.faults_path(home))] == ["slow", "freeze"]
    res = runner.invoke(cli, ["drill", "agent-fault", REGION, "--home", str(home), "--clear"])
    assert res.exit_code == 0 and "cleared 2" in res.output, res.output
    assert faults.read_rules(faults.faults_path(home)) == []
    res = runner.invoke(cli, ["drill", "agent-fault", "nowhere", "--home", str(home), "--mode", "fail"])
    assert res.exit_code != 0 and "Unknown region" in res.output
    res = runner.invoke(cli, ["drill", "agent-fault", REGION, "--home", str(home)])
    assert res.exit_code != 0 and "--mode" in res.output
    assert os.listdir(home / "control") == ["agent-faults.json.lock", "agent-faults.json"] or \
        sorted(os.listdir(home / "control")) == ["agent-faults.json", "agent-faults.json.lock"]
