"""The operator CLI: up --detach, status, token create, down; state survives a restart; down
leaves no process behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import psycopg

from tests.helpers import TEST_PORT_BASE, start_platform, stop_platform, wait_for

PORT_OFFSET = 9000  # clear of the shared e2e platform (3000): each instance spans 3000 ports


def processes_under(home: Path) -> list[str]:
    """Every live process whose command line mentions ``home`` (zombies excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(home) in cmd and state != "Z":
            found.append(f"{pid}: {cmd[:120]}")
    return found


def test_up_status_token_down_and_restart():
    p = start_platform(PORT_OFFSET)
    try:
        status = json.loads(p.pgcrdr("status", "--json").stdout)
        assert status["api_up"] and status["api_url"].endswith(str(TEST_PORT_BASE + p.port_offset))
        assert [r["cloud_name"] for r in status["regions"]] == ["local-europe-west1", "local-us-east1"]
        assert all(r["up"] and r["etcd_healthy"] for r in status["regions"])

        again = p.pgcrdr("up", "--detach", check=False)
        assert again.returncode != 0 and "already running" in again.stderr

        new_token = p.pgcrdr("token", "create").stdout.strip()
        r = httpx.get(f"{p.api_url}/v1/project", headers={"Authorization": f"Bearer {new_token}"})
        assert r.status_code == 200

        p.avn("service", "create", "pg-keep", "--service-type", "pg", "--plan", "startup-4", "--project", "pgcrdr")
        p.avn("service", "wait", "pg-keep", "--project", "pgcrdr", "--timeout", "180")
        uri = p.service("pgcrdr", "pg-keep")["service_uri"]
        with psycopg.connect(uri, connect_timeout=10) as conn:
            conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")

        down = p.pgcrdr("down")
        assert "pgcrdr is down" in down.stdout
        assert processes_under(p.home) == [], "pgcrdr down left processes running"
        assert json.loads(p.pgcrdr("status", "--json", check=False).stdout)["api_up"] is False

        # a restart finds the service and its data where they were
        p.pgcrdr("up", "--detach")
        wait_for("pg-keep to be RUNNING after the restart",
                 lambda: p.service("pgcrdr", "pg-keep")["state"] == "RUNNING", timeout=120)

        def answer() -> int:
            with psycopg.connect(uri, connect_timeout=5) as conn:
                return conn.execute("SELECT answer FROM kept").fetchone()[0]

        assert wait_for("the kept row through the same Service URI", answer, timeout=60) == 42
    finally:
        stop_platform(p)
    assert processes_under(p.home) == []
