"""``pgcrdr drill``: a pair's moves rehearsed on a fork of the pair, as an operator runs it.

1. bad input (an unknown pair, the recovery service named, an operation already running) is
   refused in one line, and nothing is created;
2. ``pgcrdr drill failover PAIR --keep --json`` on a live pair under load: the fork's primary is
   killed, failed over, restored and taken back under the drill's own write load; the report's
   figures are the fork pair's operations' records; the production pair kept taking writes, lost
   none, and its operations' history and data are as before; the report is kept with the pair
   (``drills``), and the kept fork pair is then terminated as a whole with the real avn;
3. a drill interrupted with SIGINT removes its forks and says so;
4. ``pgcrdr drill switchover PAIR --in-place --yes --markdown``: the moves are the pair's own
   operations, and the drill leaves no table behind.

The tests run in order and share one production pair.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psycopg
import pytest

from pgcrdr.drill.report import record_duration
from tests.helpers import VENV_BIN, RunningPlatform, Writer, dr_status, role_of, wait_done, wait_for

PROJECT = "pgcrdr"
PAIR, REC = "pg-drill-prod", "pg-drill-prod-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"
ITEMS = 500


@pytest.fixture(scope="module")
def prod(platform: RunningPlatform) -> RunningPlatform:
    p = platform
    p.avn("service", "create", PAIR, "--service-type", "pg", "--plan", "startup-4", "--cloud", PRI_CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", PAIR, "--project", PROJECT, "--timeout", "180")
    with psycopg.connect(p.service(PROJECT, PAIR)["service_uri"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO items SELECT generate_series(1, {ITEMS})")
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY)")
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PAIR, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "240")
    wait_for("the pair's setup to end", lambda: dr_status(p, PROJECT, PAIR)["operation"] is None, timeout=120)
    return p


def drill(p: RunningPlatform, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return p.pgcrdr("drill", *args, "--project", PROJECT, check=False, timeout=timeout)


def service_names(p: RunningPlatform) -> set[str]:
    with p.api() as c:
        return {s["service_name"] for s in c.get(f"/v1/project/{PROJECT}/service").json()["services"]}


def forks_of(p: RunningPlatform) -> set[str]:
    return {n for n in service_names(p) if n.startswith(f"{PAIR}-drill-")}


def refused(p: RunningPlatform, *args: str) -> str:
    r = drill(p, *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def history(p: RunningPlatform) -> list[tuple[str, str, str]]:
    return [(o["operation_id"], o["kind"], o["state"]) for o in dr_status(p, PROJECT, PAIR)["history"]]


def test_bad_input_is_refused_and_changes_nothing(prod: RunningPlatform):
    p = prod
    before = service_names(p)
    assert "Service pg-nope does not exist" in refused(p, "failover", "pg-nope")
    assert f"recovery service of the pair {PAIR}" in refused(p, "switchover", REC)
    assert "Project nope does not exist" in p.pgcrdr("drill", "failover", PAIR, "--project", "nope",
                                                     check=False).stderr
    # an operation already running on the pair
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{REC}", json={"disaster_recovery_role": "active"})
        assert r.status_code == 200, r.text
    assert "switchover operation is already running" in refused(p, "failover", PAIR)
    wait_done(p, PROJECT, REC, "switchover")
    assert "not in its starting state" in refused(p, "failover", PAIR)  # the recovery is active now
    p.avn("service", "update", PAIR, "--disaster-recovery-role", "active", "--project", PROJECT)
    wait_done(p, PROJECT, PAIR, "switchback")
    assert service_names(p) == before
    assert dr_status(p, PROJECT, PAIR)["drills"] == []


def test_failover_drill_on_a_fork_under_load(prod: RunningPlatform):
    p = prod
    ops_before = history(p)
    uri = p.service(PROJECT, PAIR)["service_uri"]
    load = Writer(uri)  # production keeps taking writes through its own Service URI meanwhile
    load.start()
    try:
        wait_for("writes on production", lambda: len(load.log.ok) > 20, timeout=60)
        t0 = time.monotonic()
        r = drill(p, "failover", PAIR, "--keep", "--json", timeout=900)
        took = time.monotonic() - t0
    finally:
        log = load.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    print(f"failover drill took {took:.0f} s; RTO {report['rto_s']} s; moves "
          + ", ".join(f"{m['kind']} {m['duration_s']} s (pause {m['write_pause_s']} s, client {m['client_gap_s']} s)"
                      for m in report["moves"])
          + f"; cross-region bytes {report['cross_region_bytes']}; data given up {report['data_given_up']}")
    fork, fork_dr = report["forks"]
    assert report["state"] == "done" and not report["in_place"]
    assert [m["kind"] for m in report["moves"]] == ["failover", "failback_restore", "failback_promote"]

    # the figures are the fork pair's operations' own records
    records = {o["operation_id"]: o for o in dr_status(p, PROJECT, fork)["history"]}
    for m in report["moves"]:
        op = records[m["operation_id"]]
        assert op["state"] == m["state"] == "done"
        assert m["write_pause_s"] == op["write_pause_s"]
        assert m["duration_s"] == record_duration(op)
        assert [(s["name"], s["duration_s"]) for s in m["steps"]] == [(s["name"], s["duration_s"])
                                                                      for s in op["steps"]]
    failover = records[report["moves"][0]["operation_id"]]
    restore = records[report["moves"][1]["operation_id"]]
    assert report["data_given_up"] == failover["data_loss"]
    assert report["cross_region_bytes"] == restore["details"]["restore"].get("cross_region_bytes")
    assert report["rto_s"] is not None and 0 < report["rto_s"] < 120
    w = report["writes"]
    assert w["acknowledged"] > 50 and w["lost"] is not None and w["checked_on"] == fork
    if failover["data_loss"]["known"] and failover["data_loss"]["bytes"] == 0:
        assert w["lost"] == 0, "writes lost though the failover gave up nothing"
    assert role_of(p, PROJECT, fork) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert role_of(p, PROJECT, fork_dr) == {"state": "RUNNING", "disaster_recovery_role": "passive"}

    # production: its history and its data as before, every write it acknowledged kept
    assert history(p) == ops_before
    assert role_of(p, PROJECT, PAIR) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    with psycopg.connect(uri, connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == ITEMS
        stored = {row[0] for row in conn.execute("SELECT id FROM acked_writes")}
        assert conn.execute("SELECT to_regclass('pgcrdr_drill_writes')").fetchone()[0] is None
    assert not set(log.ok) - stored, "production lost acknowledged writes during the drill"
    assert log.longest_gap() < 5, f"production paused writes for {log.longest_gap():.1f} s during the drill"

    # the report is kept with the production pair, apart from its history
    drills = dr_status(p, PROJECT, PAIR)["drills"]
    assert [d["kind"] for d in drills] == ["failover"] and drills[0]["report"] == report
    listed = p.pgcrdr("drill", "history", PAIR, "--project", PROJECT).stdout
    assert drills[0]["drill_id"] in listed and "failover" in listed
    md = p.pgcrdr("drill", "history", PAIR, "--project", PROJECT, "--json").stdout
    assert json.loads(md)[0]["report"]["moves"][0]["operation_id"] == report["moves"][0]["operation_id"]

    # kept (--keep): the fork pair goes as a whole with one terminate
    p.avn("service", "terminate", fork, "--force", "--project", PROJECT)
    wait_for("the fork pair to be terminated", lambda: not ({fork, fork_dr} & service_names(p)), timeout=120)


def test_an_interrupted_drill_removes_its_forks(prod: RunningPlatform):
    p = prod
    ops_before = history(p)
    cmd = [str(VENV_BIN / "pgcrdr"), "drill", "switchover", PAIR, "--project", PROJECT]
    proc = subprocess.Popen(cmd, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # interrupted once its fork pair is linked: the pair must go whatever state it is in
        wait_for("the drill's recovery copy", lambda: any(n.endswith("-dr") for n in forks_of(p)), timeout=300)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "removed the drill's forks" in err and "Traceback" not in err
    assert forks_of(p) == set()
    assert history(p) == ops_before
    drills = dr_status(p, PROJECT, PAIR)["drills"]
    assert drills[-1]["state"] == "interrupted" and drills[-1]["kind"] == "switchover"


def test_an_in_place_switchover_drill(prod: RunningPlatform):
    p = prod
    ops_before = history(p)
    r = drill(p, "switchover", PAIR, "--in-place", "--yes", "--markdown", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"## Switchover drill of `{PAIR}` ({PROJECT}) in place: done" in r.stdout
    kept = dr_status(p, PROJECT, PAIR)["drills"][-1]
    report = kept["report"]
    assert kept["in_place"] and report["forks"] == [] and report["writes"]["lost"] == 0
    # in place, the moves are the pair's own operations: they are its history's new entries
    new = [o for o in dr_status(p, PROJECT, PAIR)["history"] if o["operation_id"] not in {x[0] for x in ops_before}]
    assert [(o["operation_id"], o["kind"], o["write_pause_s"]) for o in new] == [
        (m["operation_id"], m["kind"], m["write_pause_s"]) for m in report["moves"]]
    assert [m["kind"] for m in report["moves"]] == ["switchover", "switchback"]
    assert role_of(p, PROJECT, PAIR) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    with psycopg.connect(p.service(PROJECT, PAIR)["service_uri"], connect_timeout=10) as conn:
        assert conn.execute("SELECT to_regclass('pgcrdr_drill_writes')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == ITEMS
