"""In-region HA: the writer node of a 2-node service dies; a standby of the same service takes
over, the Service URI reaches the new writer, and no acknowledged write is lost."""

from __future__ import annotations

import time

import psycopg

from tests.helpers import RunningPlatform, Writer, wait_for

PROJECT = "pgcrdr"
SVC = "pg-ha"


def test_writer_node_loss_fails_over_inside_the_region(platform: RunningPlatform):
    platform.avn("service", "create", SVC, "--service-type", "pg", "--plan", "business-4",
                 "--cloud", "local-us-east1", "--project", PROJECT)
    platform.avn("service", "wait", SVC, "--project", PROJECT, "--timeout", "240")
    svc = platform.service(PROJECT, SVC)
    roles = sorted(n["role"] for n in svc["node_states"])
    assert roles == ["master", "standby"], svc["node_states"]
    uri = svc["service_uri"]
    with psycopg.connect(uri, connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")

    writer = Writer(uri)
    writer.start()
    wait_for("some acknowledged writes before the node loss", lambda: len(writer.log.ok) > 50, timeout=30)

    old_master = next(n["name"] for n in svc["node_states"] if n["role"] == "master")
    try:
        drill = platform.pgcrdr("drill", "kill-node", SVC, old_master, "--project", PROJECT)
        assert "killed" in drill.stdout, drill.stdout
        t_kill = time.monotonic()
        # Patroni's leader key expires after ttl=20 s; bound generously for a loaded machine.
        new_master = wait_for(
            "a standby of the same service to become the writer",
            lambda: next((n["name"] for n in platform.service(PROJECT, SVC)["node_states"]
                          if n["role"] == "master" and n["name"] != old_master), None),
            timeout=90,
        )
        n_ok = len(writer.log.ok)
        wait_for("writes through the Service URI to succeed again",
                 lambda: len(writer.log.ok) > n_ok + 20, timeout=60)
        failover_s = time.monotonic() - t_kill
    finally:
        log = writer.stop()

    assert new_master != old_master
    with psycopg.connect(uri, connect_timeout=10) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
    lost = [i for i in log.ok if i not in stored]
    assert lost == [], f"{len(lost)} acknowledged writes lost"
    assert not (set(log.failed) & stored), "a write reported failed is present"
    print(f"in-region failover: {failover_s:.1f}s until writes resumed; ok={len(log.ok)} "
          f"failed={len(log.failed)} unknown={len(log.unknown)} longest gap={log.longest_gap():.1f}s")
    platform.avn("service", "terminate", SVC, "--force", "--project", PROJECT)

