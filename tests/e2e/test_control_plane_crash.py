"""The control plane killed with SIGKILL after each step of a switchover and of a failback: after
a restart the operation finishes, there is exactly one writer, and no acknowledged write is lost.

The regions and the Service URI endpoints keep running while the control plane is down (they do
not depend on it); the restarted control plane adopts them and resumes the operation at the
first step not recorded as done.
"""

from __future__ import annotations

import os
import signal
import subprocess

import psycopg
import pytest

from pgcrdr.controlplane.services import cluster_id
from tests.helpers import VENV_BIN, RunningPlatform, Writer, WriterProbe, start_platform, stop_platform, wait_for

PROJECT = "pgcrdr"
PRI, REC = "crash-pri", "crash-rec"


@pytest.fixture(scope="module")
def pair():
    p = start_platform(6000)
    try:
        with p.api() as c:
            c.post(f"/v1/project/{PROJECT}/service", json={
                "service_name": PRI, "service_type": "pg", "plan": "startup-4", "cloud": "local-europe-west1",
            }).raise_for_status()
        wait_for("the primary to run", lambda: p.service(PROJECT, PRI)["state"] == "RUNNING", timeout=120)
        with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], autocommit=True) as conn:
            conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY)")
        with p.api() as c:
            c.post(f"/v1/project/{PROJECT}/service", json={
                "service_name": REC, "service_type": "pg", "plan": "startup-4", "cloud": "local-us-east1",
                "service_integrations": [{"integration_type": "disaster_recovery", "source_service": PRI}],
            }).raise_for_status()
        wait_for("the recovery copy to run", lambda: last_op(p) is not None and last_op(p)["state"] == "done",
                 timeout=240)
        yield p
    finally:
        stop_platform(p)


def dr(p: RunningPlatform) -> dict:
    with p.api() as c:
        return c.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()


def last_op(p: RunningPlatform) -> dict | None:
    d = dr(p)
    if d["operation"] is not None:
        return None
    return d["history"][-1] if d["history"] else None


def control_plane_pid(p: RunningPlatform) -> int:
    return int((p.home / "run" / "pgcrdr.pid").read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def restart_control_plane(p: RunningPlatform, crash_after: str | None) -> None:
    """SIGKILL the control plane (regions keep running) and start it again."""
    pid = control_plane_pid(p)
    os.kill(pid, signal.SIGKILL)
    wait_for("the killed control plane to be gone", lambda: not alive(pid), timeout=30, interval=0.1)
    env = dict(p.env)
    if crash_after:
        env["PGCRDR_CRASH_AFTER"] = crash_after
    subprocess.run([str(VENV_BIN / "pgcrdr"), "up", "--detach"], env=env, check=True, capture_output=True,
                   timeout=120)


def node_dsns(p: RunningPlatform) -> dict[str, str]:
    return p.node_dsns(PROJECT, [(PRI, "local-europe-west1"), (REC, "local-us-east1")])


def crash_during(p: RunningPlatform, service: str, role: str, kind: str, step: str) -> dict:
    restart_control_plane(p, crash_after=f"{kind}:{step}")
    pid = control_plane_pid(p)
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{service}", json={"disaster_recovery_role": role})
        assert r.status_code == 200, r.text
    wait_for(f"the crash drill after {kind}:{step}", lambda: not alive(pid), timeout=120, interval=0.1)
    subprocess.run([str(VENV_BIN / "pgcrdr"), "up", "--detach"], env=p.env, check=True, capture_output=True,
                   timeout=120)
    op = wait_for(f"the {kind} to finish after the restart", lambda: last_op(p), timeout=240)
    # Killed inside the window in which pooled writes are held (after pause or demote), the
    # move may be undone when the restart outlasts the pause deadline: both ends are clean.
    ends = ("done", "undone") if step in ("pause", "demote") else ("done",)
    assert op["kind"] == kind and op["state"] in ends, op
    return op


# (service whose role is requested, role, operation kind, step after which the control plane dies)
SWITCH_POINTS = [
    (REC, "active", "switchover", "pause"),
    (PRI, "active", "switchback", "demote"),
    (REC, "active", "switchover", "promote"),
    (PRI, "active", "switchback", "repoint"),
    (REC, "active", "switchover", "records"),
    (PRI, "active", "switchback", "resume"),
]


def test_switchover_survives_a_control_plane_crash_at_every_step(pair: RunningPlatform):
    p = pair
    svc = p.service(PROJECT, PRI)
    writer = Writer(svc["connection_info"]["pgbouncer"][0], prepare_threshold=None)
    probe = WriterProbe(lambda: node_dsns(p))
    writer.start()
    probe.start()
    try:
        for service, role, kind, step in SWITCH_POINTS:
            if p.service(PROJECT, service)["disaster_recovery_role"] == "active":
                # an earlier move was undone: first move the writer away from ``service``
                other = PRI if service == REC else REC
                with p.api() as c:
                    c.put(f"/v1/project/{PROJECT}/service/{other}", json={"disaster_recovery_role": "active"})
                wait_for("the move away", lambda: last_op(p) is not None, timeout=120)
                if p.service(PROJECT, service)["disaster_recovery_role"] == "active":
                    continue
            op = crash_during(p, service, role, kind, step)
            active = service if op["state"] == "done" else (PRI if service == REC else REC)
            assert p.service(PROJECT, active)["disaster_recovery_role"] == "active"
            n = len(writer.log.ok)
            wait_for(f"writes after {kind}:{step}", lambda n=n: len(writer.log.ok) > n + 10, timeout=60)
    finally:
        log = writer.stop()
        probe.stop()
    assert probe.two_writers == [], probe.two_writers[:3]
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"]) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
    assert not (set(log.ok) - stored), "acknowledged writes lost"
    print(f"crash drills: ok={len(log.ok)} failed={len(log.failed)} unknown={len(log.unknown)} "
          f"longest gap {log.longest_gap():.1f}s")


def test_failback_survives_a_control_plane_crash(pair: RunningPlatform):
    p = pair
    with p.api() as c:
        c.put(f"/v1/project/{PROJECT}/service/{PRI}", json={"disaster_recovery_role": "failed"}).raise_for_status()
    wait_for("the failover", lambda: (last_op(p) or {}).get("kind") == "failover", timeout=120)
    crash_during(p, PRI, "passive", "failback_restore", "preserve")
    assert p.service(PROJECT, PRI)["disaster_recovery_role"] == "passive"
    op = crash_during(p, PRI, "active", "failback_promote", "demote")
    if op["state"] == "undone":  # the restart outlasted the pause deadline: the recovery writes again
        assert p.service(PROJECT, REC)["disaster_recovery_role"] == "active"
        with p.api() as c:
            c.put(f"/v1/project/{PROJECT}/service/{PRI}", json={"disaster_recovery_role": "active"}).raise_for_status()
        op = wait_for("the promote asked again", lambda: last_op(p), timeout=120)
        assert op["state"] == "done", op
    assert p.service(PROJECT, PRI)["disaster_recovery_role"] == "active"
    assert p.service(PROJECT, REC)["disaster_recovery_role"] == "passive"
    writers = [n for n, dsn in node_dsns(p).items()
               if psycopg.connect(dsn, connect_timeout=5).execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]]
    assert writers == [n for n in writers if n.startswith(cluster_id(PROJECT, PRI))] and len(writers) == 1
