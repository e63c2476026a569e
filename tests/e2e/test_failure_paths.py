"""Failure paths of planned moves on the real platform, with the acknowledged-writes checker and
the two-writer probe: a region agent that stops answering mid-move (SIGSTOP), a client holding a
transaction open through a switchover, the control plane killed while PgBouncer's PAUSE waits on
that transaction, and WAL shipping frozen as a switchover begins. Whatever happens, the move
completes or is undone, the old writer takes writes again, pooled writes are held no longer
than the pause deadline, and no acknowledged write is lost.

One platform for the module (its control plane is killed and restarted), one pair per test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from pgcrdr import processes as proc
from pgcrdr.controlplane.services import cluster_id
from tests.helpers import VENV_BIN, RunningPlatform, Writer, WriterProbe, start_platform, stop_platform, wait_for

PROJECT = "pgcrdr"
EU, US = "local-europe-west1", "local-us-east1"
PAUSE_DEADLINE = 5.0  # the platform's default (PGCRDR_PAUSE_DEADLINE)


@pytest.fixture(scope="module")
def p():
    plat = start_platform(9000)
    try:
        yield plat
    finally:
        stop_platform(plat)


def make_pair(p: RunningPlatform, pri: str) -> str:
    rec = pri + "-dr"
    with p.api() as c:
        c.post(f"/v1/project/{PROJECT}/service", json={
            "service_name": pri, "service_type": "pg", "plan": "startup-4", "cloud": EU}).raise_for_status()
    wait_for(f"{pri} to run", lambda: p.service(PROJECT, pri)["state"] == "RUNNING", timeout=180)
    with psycopg.connect(p.service(PROJECT, pri)["service_uri"], autocommit=True) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY)")
    with p.api() as c:
        c.post(f"/v1/project/{PROJECT}/service", json={
            "service_name": rec, "service_type": "pg", "plan": "startup-4", "cloud": US,
            "service_integrations": [{"integration_type": "disaster_recovery", "source_service": pri}],
        }).raise_for_status()
    wait_for(f"{rec} to be a streaming copy", lambda: last_op(p, pri) is not None
             and p.service(PROJECT, rec)["state"] == "RUNNING", timeout=300)
    return rec


def dr(p: RunningPlatform, pri: str) -> dict:
    with p.api() as c:
        return c.get(f"/v1/project/{PROJECT}/service/{pri}/disaster-recovery").json()


def last_op(p: RunningPlatform, pri: str) -> dict | None:
    d = dr(p, pri)
    if d["operation"] is not None:
        return None
    return d["history"][-1] if d["history"] else None


def current_step(p: RunningPlatform, pri: str) -> str | None:
    op = dr(p, pri)["operation"]
    if op is None:
        return None
    return next((s["name"] for s in op["steps"] if s["state"] in ("pending", "running")), None)


def request(p: RunningPlatform, name: str, role: str) -> None:
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{name}", json={"disaster_recovery_role": role})
        assert r.status_code == 200, r.text


def wait_step(p: RunningPlatform, pri: str, steps: tuple[str, ...], timeout: float = 60) -> str:
    return wait_for(f"the operation to reach {steps}", lambda: current_step(p, pri) in steps and current_step(p, pri),
                    timeout=timeout, interval=0.01)


def agent_pid(p: RunningPlatform, region: str) -> int:
    return int((p.home / "run" / f"agent-{region}.pid").read_text())


def cp_pid(p: RunningPlatform) -> int:
    return int((p.home / "run" / "pgcrdr.pid").read_text())


def pooled(p: RunningPlatform, pri: str) -> str:
    return p.service(PROJECT, pri)["connection_info"]["pgbouncer"][0]


def dsns(p: RunningPlatform, pri: str) -> dict[str, str]:
    return p.node_dsns(PROJECT, [(pri, EU), (pri + "-dr", US)])


def load(p: RunningPlatform, pri: str) -> tuple[Writer, WriterProbe]:
    w = Writer(pooled(p, pri), prepare_threshold=None)
    probe = WriterProbe(lambda: dsns(p, pri))
    w.start()
    probe.start()
    wait_for("acknowledged pooled writes", lambda: len(w.log.ok) > 20, timeout=60)
    return w, probe


def finish_load(p: RunningPlatform, pri: str, w: Writer, probe: WriterProbe) -> None:
    log = w.stop()
    probe.stop()
    assert probe.two_writers == [], f"two writers at once: {probe.two_writers[:3]}"
    with psycopg.connect(p.service(PROJECT, pri)["service_uri"], connect_timeout=10) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
    assert not (set(log.ok) - stored), f"{len(set(log.ok) - stored)} acknowledged writes lost"
    assert not (set(log.failed) & stored), "a write reported as failed is present"


def writes_resume(w: Writer, after: float, timeout: float) -> float:
    """Seconds from ``after`` (monotonic) to the first acknowledged write after it."""
    def first() -> float | None:
        later = [t for t in w.log.ok_times if t > after]
        return min(later) if later else None
    t = wait_for("writes through the Service URI", first, timeout=timeout, interval=0.05)
    return t - after


def open_transaction(uri: str, hold_s: float, started: threading.Event) -> threading.Thread:
    """A client that holds a transaction open for ``hold_s`` through the pooled URI."""
    def run() -> None:
        with psycopg.connect(uri, prepare_threshold=None, application_name="long-txn") as conn:
            conn.execute("INSERT INTO acked_writes(id) VALUES (%s)", (f"long-{time.time()}",))
            started.set()
            time.sleep(hold_s)
            conn.rollback()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(20), "the long transaction did not start"
    return t


def test_stalled_recovery_agent_during_a_switchover_is_undone_at_once(p: RunningPlatform):
    """Item 1: the recovery region's agent stops answering (SIGSTOP) while the switchover's
    pause/demote runs. The move is undone within the pause deadline, without that agent: the
    primary takes writes again while the agent is still frozen; nobody is left without a writer."""
    pri = "fp-stall"
    rec = make_pair(p, pri)
    w, probe = load(p, pri)
    hold = threading.Event()
    # A 1.5 s transaction makes PAUSE wait long enough to freeze the agent inside the window.
    holder = open_transaction(pooled(p, pri), 1.5, hold)
    pid = agent_pid(p, US)
    request(p, rec, "active")
    try:
        wait_step(p, pri, ("pause", "demote", "confirm_lsn"))
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        op = wait_for("the switchover to end", lambda: last_op(p, pri), timeout=60)
        resumed = writes_resume(w, frozen_at, timeout=30)
        assert (p.service(PROJECT, pri)["disaster_recovery_role"], p.service(PROJECT, rec)["disaster_recovery_role"]) \
            == ("active", "passive")
        # still frozen: the undo did not need it
        assert proc.is_running(pid) and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
    finally:
        os.kill(pid, signal.SIGCONT)
        holder.join(10)
    assert op["kind"] == "switchover" and op["state"] == "undone", op
    assert resumed < PAUSE_DEADLINE + 8, f"writes resumed {resumed:.1f}s after the agent froze"
    wait_for("the pair to be RUNNING again", lambda: p.service(PROJECT, pri)["state"] == "RUNNING"
             and p.service(PROJECT, rec)["state"] == "RUNNING", timeout=60)
    finish_load(p, pri, w, probe)
    # and once the agent answers and the copy streams again (after the undo the primary is on a
    # new timeline: 409 "not streaming" until it follows), a switchover works
    def accepted() -> bool:
        with p.api() as c:
            r = c.put(f"/v1/project/{PROJECT}/service/{rec}", json={"disaster_recovery_role": "active"})
        assert r.status_code in (200, 409), r.text
        return r.status_code == 200
    wait_for("the switchover to be accepted", accepted, timeout=120, interval=1.0)
    op = wait_for("the retried switchover", lambda: last_op(p, pri), timeout=120)
    assert op["state"] == "done", op
    print(f"stalled agent: undone, writes resumed {resumed:.2f}s after the freeze")


def test_open_transaction_holds_pooled_writes_no_longer_than_the_deadline(p: RunningPlatform):
    """Item 3: a client holds a transaction open for 40 s through the pooled URI as a
    switchover starts: PAUSE is tried once, pooled writes are held at most the pause deadline,
    the move is undone and its message names the session that held it."""
    pri = "fp-txn"
    rec = make_pair(p, pri)
    w, probe = load(p, pri)
    holder = open_transaction(pooled(p, pri), 40, threading.Event())
    t0 = time.monotonic()
    request(p, rec, "active")
    op = wait_for("the switchover to end", lambda: last_op(p, pri), timeout=60)
    took = time.monotonic() - t0
    gap_start = time.monotonic()
    wait_for("writes after the undo", lambda: len(w.log.ok_times) and w.log.ok_times[-1] > gap_start, timeout=10)
    finish_load(p, pri, w, probe)
    holder.join(45)
    assert op["state"] == "undone", op
    assert "long-txn" in op["message"] and "pid" in op["message"], op["message"]
    assert op["write_pause_s"] <= PAUSE_DEADLINE + 0.5, op["write_pause_s"]
    assert w.log.longest_gap() <= PAUSE_DEADLINE + 2.0, w.log.longest_gap()
    assert took < 30, f"the move was neither done nor undone for {took:.0f}s"
    assert p.service(PROJECT, pri)["disaster_recovery_role"] == "active"
    print(f"open transaction: undone in {took:.1f}s, pooled writes held {op['write_pause_s']}s, "
          f"longest gap {w.log.longest_gap():.2f}s")


def test_control_plane_killed_while_pause_waits_resumes_pooled_clients(p: RunningPlatform):
    """Item 2: the control plane is SIGKILLed while PgBouncer's PAUSE waits on an open
    transaction. PgBouncer stays paused; once the control plane is back, pooled clients resume
    within 2 s, and the operation ends (undone, naming the session) instead of retrying forever."""
    pri = "fp-crash"
    rec = make_pair(p, pri)
    uri = pooled(p, pri)  # read now: the API is down for a while below
    holder = open_transaction(uri, 30, threading.Event())
    request(p, rec, "active")
    wait_step(p, pri, ("pause",))
    time.sleep(0.5)  # PAUSE is sent and waits on the open transaction
    pid = cp_pid(p)
    os.kill(pid, signal.SIGKILL)
    wait_for("the control plane to be gone", lambda: not proc.is_running(pid), timeout=30, interval=0.05)
    # PgBouncer keeps the PAUSE of its dead admin client: a pooled query now waits.
    held = threading.Event()

    def query() -> None:
        with psycopg.connect(uri, prepare_threshold=None, connect_timeout=60) as conn:
            conn.execute("SELECT 1")
        held.set()
    q = threading.Thread(target=query, daemon=True)
    q.start()
    assert not held.wait(2.0), "the pooled endpoint was not held while the control plane was dead"
    subprocess.run([str(VENV_BIN / "pgcrdr"), "up", "--detach"], env=p.env, check=True, capture_output=True,
                   timeout=120)
    back = time.monotonic()
    assert held.wait(10), "pooled clients still held after the control plane came back"
    resumed_after = time.monotonic() - back
    op = wait_for("the switchover to end", lambda: last_op(p, pri), timeout=60)
    holder.join(35)
    assert resumed_after <= 2.0, f"pooled clients resumed {resumed_after:.2f}s after the restart"
    assert op["state"] == "undone" and "long-txn" in (op["message"] or ""), op
    assert p.service(PROJECT, pri)["disaster_recovery_role"] == "active"
    print(f"control plane killed during PAUSE: pooled clients resumed {resumed_after:.2f}s after restart")


def _children(pid: int, marker: str) -> list[int]:
    return [k for k in proc.children_of(pid) if marker in proc.cmdline(k)]


def test_frozen_wal_shipping_is_bounded_by_the_pause_deadline(p: RunningPlatform):
    """Item 8: the walsender and walreceiver freeze as a switchover begins. The demote cannot
    finish (a clean shutdown waits for the walsender); past the pause deadline the pooler is
    resumed and the move undone: the old writer takes writes again, nothing acknowledged lost."""
    pri = "fp-wal"
    rec = make_pair(p, pri)
    w, probe = load(p, pri)
    pms = []
    for svc, name in ((pri, "walsender"), (rec, "walreceiver")):
        pid_files = list(p.home.glob(f"regions/*/clusters/{cluster_id(PROJECT, svc)}/nodes/*/data/postmaster.pid"))
        assert pid_files, f"no postmaster.pid of {svc}"
        kids = [k for f in pid_files for k in _children(int(f.read_text().split()[0]), name)]
        assert kids, f"no {name} of {svc}"
        pms += kids
    t0 = time.monotonic()
    for k in pms:
        os.kill(k, signal.SIGSTOP)
    try:
        request(p, rec, "active")
        op = wait_for("the switchover to end", lambda: last_op(p, pri), timeout=90)
        took = time.monotonic() - t0
        resumed = writes_resume(w, t0 + 1.0, timeout=60)
    finally:
        for k in pms:
            try:
                os.kill(k, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert op["state"] in ("undone", "done"), op
    if op["state"] == "undone":
        assert p.service(PROJECT, pri)["disaster_recovery_role"] == "active"
        assert op["write_pause_s"] <= PAUSE_DEADLINE + 1.0, op["write_pause_s"]
    wait_for("the pair to be RUNNING again", lambda: p.service(PROJECT, pri)["state"] == "RUNNING"
             and p.service(PROJECT, rec)["state"] == "RUNNING", timeout=120)
    finish_load(p, pri, w, probe)
    print(f"frozen WAL shipping: {op['state']} after {took:.1f}s; pooled writes held {op['write_pause_s']}s; "
          f"writes resumed {resumed:.1f}s after the move began")
