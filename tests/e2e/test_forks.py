"""Forks and point-in-time recovery (issue 16, first step), with the real `avn`:
``avn service create NEW -c service_to_fork_from=SRC [-c recovery_target_time=T]`` makes a new
service from SRC's backups in SRC's region's repository.

1. bad target times, an unknown source or project and another cloud are refused, and nothing is
   created;
2. a fork at a time between two known writes holds exactly the rows written before it, and a fork
   of the source while it takes writes (no target: now) holds every write acknowledged before it
   was requested; both are ordinary, writable services, their restore showed in node_states, and
   a fork gets its own recovery copy in another cloud.
"""

from __future__ import annotations

import datetime as dt
import time

import psycopg

from tests.helpers import RunningPlatform, Writer, role_of, wait_for

PROJECT = "pgcrdr"
SRC = "pg-fork-src"
CLOUD, OTHER_CLOUD = "local-europe-west1", "local-us-east1"


def fork_cmd(name: str, *config: str, cloud: str = CLOUD, plan: str = "startup-4") -> list[str]:
    args = ["service", "create", name, "--service-type", "pg", "--plan", plan, "--cloud", cloud,
            "--project", PROJECT]
    for c in config:
        args += ["-c", c]
    return args


def refused(p: RunningPlatform, name: str, *config: str, cloud: str = CLOUD) -> str:
    r = p.avn(*fork_cmd(name, *config, cloud=cloud), check=False)
    assert r.returncode != 0, r.stdout
    return r.stdout + r.stderr


def rows(uri: str) -> list[int]:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]


def acked(uri: str) -> set[str]:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM acked_writes")}


def wait_running(p: RunningPlatform, name: str, phases: set[str]) -> dict:
    def running() -> dict | None:
        svc = p.service(PROJECT, name)
        for n in svc["node_states"]:
            phases.update(u["phase"] for u in n["progress_updates"] if not u["completed"])
        assert "could not be restored" not in (svc.get("status_message") or ""), svc["status_message"]
        return svc if svc["state"] == "RUNNING" else None

    return wait_for(f"{name} RUNNING", running, timeout=240, interval=0.5)


def test_forks(platform: RunningPlatform):
    p = platform
    p.avn("service", "create", SRC, "--service-type", "pg", "--plan", "startup-4", "--cloud", CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", SRC, "--project", PROJECT, "--timeout", "180")  # RUNNING: a backup exists
    src_uri = p.service(PROJECT, SRC)["service_uri"]
    with psycopg.connect(src_uri, connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 10)")
        time.sleep(1.0)
        between = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1.0)
        conn.execute("INSERT INTO items SELECT generate_series(11, 20)")
    target = between.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")

    fork_of = f"service_to_fork_from={SRC}"
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "in the future" in refused(p, "pg-fork-bad", fork_of, f"recovery_target_time={future}")
    assert "before the oldest backup" in refused(p, "pg-fork-bad", fork_of, "recovery_target_time=2001-01-01T00:00:00Z")
    assert "not an RFC 3339 time" in refused(p, "pg-fork-bad", fork_of, "recovery_target_time=yesterday")
    assert "Service pg-nope does not exist" in refused(p, "pg-fork-bad", "service_to_fork_from=pg-nope")
    assert "Project nope does not exist" in refused(p, "pg-fork-bad", fork_of, "project_to_fork_from=nope")
    assert "in the cloud of the service it is forked from" in refused(p, "pg-fork-bad", fork_of, cloud=OTHER_CLOUD)
    listed = p.avn("service", "list", "--project", PROJECT, "--json").stdout
    assert "pg-fork-bad" not in listed

    writer = Writer(src_uri)
    writer.start()
    wait_for("writes on the source", lambda: len(writer.log.ok) > 20, timeout=60)
    # two nodes: the second is cloned from the restored one once it leads
    p.avn(*fork_cmd("pg-fork-at", fork_of, f"recovery_target_time={target}", plan="business-4"))
    before_fork = set(writer.log.ok)
    p.avn(*fork_cmd("pg-fork-now", fork_of))
    n = len(writer.log.ok)
    wait_for("writes after the fork request", lambda: len(writer.log.ok) > n + 20, timeout=60)
    log = writer.stop()

    phases: set[str] = set()
    at = wait_running(p, "pg-fork-at", phases)
    now = wait_running(p, "pg-fork-now", phases)
    assert {"basebackup", "stream"} <= phases, phases
    assert at["user_config"]["service_to_fork_from"] == SRC
    assert rows(at["service_uri"]) == list(range(1, 11))
    assert sorted(n["role"] for n in at["node_states"]) == ["master", "standby"], at["node_states"]

    in_fork = acked(now["service_uri"])
    assert before_fork <= in_fork, f"{len(before_fork - in_fork)} writes acknowledged before the fork are missing"
    assert in_fork <= set(log.ok) | set(log.unknown)
    assert rows(now["service_uri"]) == list(range(1, 21))
    with psycopg.connect(now["service_uri"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (21)")  # an ordinary, writable service
    assert rows(src_uri) == list(range(1, 21))

    # ... with its own recovery copy in the other cloud
    p.avn("service", "create", "pg-fork-dr", "--service-type", "pg", "--plan", "startup-4", "--cloud", OTHER_CLOUD,
          "--project", PROJECT, "--disaster-recovery-copy-for", "pg-fork-now")
    p.avn("service", "wait", "pg-fork-dr", "--project", PROJECT, "--timeout", "180")
    assert role_of(p, PROJECT, "pg-fork-dr") == {"state": "RUNNING", "disaster_recovery_role": "passive"}
