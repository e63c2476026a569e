"""The sentence naming the sessions that held a writer up, the preserve job as persisted across
an agent restart, and the synchronous ``AgentClient.preserve`` (start, then poll) against a
scripted local server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.agent.crdr import load_crdr_results
from pgcrdr.agentapi.models import PreserveRequest, PreserveResult, PreserveState, SessionInfo, SessionsInfo
from pgcrdr.agent.sessions import sort_sessions
from pgcrdr.agentapi.sessions import describe_sessions
from tests.unit.local_server import Server, local_server


def session(pid: int, xact: float | None, **kw: object) -> SessionInfo:
    base: dict = {"pid": pid, "usename": "avnadmin", "application_name": "psql", "state": "idle in transaction",
                  "xact_age_s": xact, "query_age_s": xact}
    base.update(kw)
    return SessionInfo(**base)


def test_one_session_is_named_with_its_user_application_and_transaction_age() -> None:
    info = SessionsInfo(node="pg-1", sessions=[session(1234, 12.34)])
    assert describe_sessions(info) == "held by pid 1234 (user avnadmin, application psql, transaction open 12.3 s)"


def test_several_sessions_are_named_oldest_first_up_to_the_limit() -> None:
    info = SessionsInfo(node="pg-1", sessions=sort_sessions([
        session(11, 1.0), session(12, 40.0, application_name=None), session(13, None, state="active",
                                                                             query_age_s=2.0),
        session(14, 5.0, usename="app"), session(15, 3.0)]))
    assert [s.pid for s in info.sessions] == [12, 14, 15, 11, 13]
    assert describe_sessions(info, limit=3) == (
        "held by pid 12 (user avnadmin, transaction open 40.0 s), "
        "pid 14 (user app, application psql, transaction open 5.0 s), "
        "pid 15 (user avnadmin, application psql, transaction open 3.0 s) and 2 more")
    assert describe_sessions(info, limit=1).endswith("transaction open 40.0 s) and 4 more")
    two = SessionsInfo(node="pg-1", sessions=info.sessions[3:])
    assert describe_sessions(two, limit=5) == (
        "held by pid 11 (user avnadmin, application psql, transaction open 1.0 s) and "
        "pid 13 (user avnadmin, application psql, query running 2.0 s)")
    bare = SessionsInfo(node="pg-1", sessions=[SessionInfo(pid=7)])
    assert describe_sessions(bare) == "held by pid 7"


def test_no_session_says_so() -> None:
    assert describe_sessions(SessionsInfo(node="pg-1")) == "no session held a transaction open"


# --- the preserve job across an agent restart ------------------------------------------------

def cluster_at(d: Path) -> SimpleNamespace:
    return SimpleNamespace(layout=SimpleNamespace(dir=d), last_demote=None, last_promote=None, preserve=None)


def test_a_preserve_running_when_the_agent_died_comes_back_failed(tmp_path: Path) -> None:
    running = PreserveState(request_id="r1", fork_lsn="0/3000000", node="pg-1", started="2025-01-01T00:00:00Z",
                            message="copying the data directory of pg-1")
    (tmp_path / "preserve-job.json").write_text(running.model_dump_json())
    c = cluster_at(tmp_path)
    load_crdr_results(c)  # type: ignore[arg-type]
    assert c.preserve.state == "failed" and c.preserve.finished and "interrupted" in c.preserve.message
    assert c.preserve.request_id == "r1"
    again = PreserveState.model_validate_json((tmp_path / "preserve-job.json").read_text())
    assert again == c.preserve, "the failure is persisted"


def test_a_finished_preserve_is_loaded_as_it_was(tmp_path: Path) -> None:
    done = PreserveState(request_id="r2", fork_lsn="0/3000000", state="done", started="s", finished="f",
                         result=PreserveResult(path="/x/data", bytes=10, end_lsn="0/3000100"))
    (tmp_path / "preserve-job.json").write_text(done.model_dump_json())
    c = cluster_at(tmp_path)
    load_crdr_results(c)  # type: ignore[arg-type]
    assert c.preserve == done
    empty = cluster_at(tmp_path / "none")
    load_crdr_results(empty)  # type: ignore[arg-type]
    assert empty.preserve is None


# --- AgentClient.preserve: start, then poll --------------------------------------------------

RESULT = PreserveResult(path="/kept/data", bytes=123, end_lsn="0/3000100")
PATH = "/clusters/pg1/preserve"


def state(rid: str, st: str, **kw: object) -> dict:
    return PreserveState(request_id=rid, fork_lsn="0/3000000", state=st, started="s",  # type: ignore[arg-type]
                         **kw).model_dump(mode="json")


@pytest.fixture()
def server() -> Iterator[Server]:
    with local_server() as srv:
        yield srv


def test_preserve_starts_the_job_and_polls_it_to_its_result(server: Server) -> None:
    server.answers[("POST", PATH)] = [(200, state("mine", "running"))]
    server.answers[("GET", PATH)] = [(200, state("mine", "running")), (200, state("mine", "done", result=RESULT))]
    c = AgentClient(server.url, "tok")
    assert c.preserve("pg1", PreserveRequest(fork_lsn="0/3000000", request_id="mine"), poll_s=0.01) == RESULT
    assert server.seen == [("POST", PATH), ("GET", PATH), ("GET", PATH)]
    assert server.bodies == [{"fork_lsn": "0/3000000", "request_id": "mine"}]


def test_preserve_without_a_request_id_picks_one(server: Server) -> None:
    server.answers[("POST", PATH)] = [(200, state("x", "done", result=RESULT))]
    c = AgentClient(server.url, "tok")
    assert c.preserve("pg1", PreserveRequest(fork_lsn="0/3000000"), poll_s=0.01) == RESULT
    assert server.bodies[0]["request_id"], "a request id is always sent"


def test_preserve_waits_for_another_request_still_running(server: Server) -> None:
    server.answers[("POST", PATH)] = [(409, {"message": "being preserved already"}),
                                      (200, state("mine", "done", result=RESULT))]
    server.answers[("GET", PATH)] = [(200, state("other", "running"))]
    c = AgentClient(server.url, "tok")
    assert c.preserve("pg1", PreserveRequest(fork_lsn="0/3000000", request_id="mine"), poll_s=0.01) == RESULT
    assert server.seen == [("POST", PATH), ("GET", PATH), ("POST", PATH)]


def test_preserve_reports_a_failed_job_a_refusal_and_the_bound(server: Server) -> None:
    c = AgentClient(server.url, "tok")
    server.answers[("POST", PATH)] = [(200, state("mine", "failed", message="preserve failed: disk full"))]
    with pytest.raises(AgentError, match="disk full") as exc:
        c.preserve("pg1", PreserveRequest(fork_lsn="0/3000000", request_id="mine"), poll_s=0.01)
    assert exc.value.status == 500
    server.answers[("POST", PATH)] = [(409, {"message": "pg1-1 of pg1 is running; fence the cluster"})]
    server.answers[("GET", PATH)] = [(404, {"message": "never preserved"})]
    with pytest.raises(AgentError, match="fence") as exc:
        c.preserve("pg1", PreserveRequest(fork_lsn="0/3000000"), poll_s=0.01)
    assert exc.value.status == 409
    server.answers[("POST", PATH)] = [(200, state("mine", "running"))]
    server.answers[("GET", PATH)] = [(200, state("mine", "running"))]
    with pytest.raises(AgentError, match="still running after") as exc:
        c.preserve("pg1", PreserveRequest(fork_lsn="0/3000000", request_id="mine"), timeout=0.1, poll_s=0.02)
    assert exc.value.status == 504
    assert c.get_preserve("pg1") is not None
    server.answers[("GET", PATH)] = [(404, {"message": "never preserved"})]
    assert c.get_preserve("pg1") is None
