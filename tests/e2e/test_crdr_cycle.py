"""The whole CRDR cycle on real clusters, as the seed page and crdr.md tell it, driven by the
real `avn` (the seed's CLI tab) and by plain HTTP (its API tab), under continuous writes through
the Service URI with the acknowledged-writes checker, while a probe makes sure no two nodes
ever accept writes at once.

The tests in this module run in order and share one pair of services.
"""

from __future__ import annotations

import json
import time

import httpx
import psycopg
import pytest

from pgcrdr.controlplane.services import cluster_id
from tests import helpers
from tests.helpers import RunningPlatform, Writer, WriterProbe, dr_status, wait_for

PROJECT = "pgcrdr"
PRI, REC = "pg-primary", "pg-primary-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"

state: dict = {}  # carried from one step to the next


def state_role(p: RunningPlatform, name: str) -> dict:
    """`avn service get NAME --project P --json | jq '{state: .state, disaster_recovery_role: ...}'`"""
    svc = json.loads(p.avn("service", "get", name, "--project", PROJECT, "--json").stdout)
    return {"state": svc["state"], "disaster_recovery_role": svc["disaster_recovery_role"]}


def dr(p: RunningPlatform, name: str) -> dict:
    return dr_status(p, PROJECT, name)


def wait_operation(p: RunningPlatform, name: str, kind: str, timeout: float = 180) -> dict:
    """Wait until the pair's latest operation of ``kind`` has finished; it must have succeeded."""
    op = helpers.wait_operation(p, PROJECT, name, kind, timeout=timeout)
    assert op["state"] == "done", json.dumps(op, indent=1)
    return op


def node_dsns(p: RunningPlatform) -> dict[str, str]:
    """Every PostgreSQL node of both services, addressed directly (not through any proxy)."""
    return p.node_dsns(PROJECT, [(PRI, PRI_CLOUD), (REC, REC_CLOUD)])


def all_ids(uri: str) -> set[str]:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM acked_writes")}


def start_load(p: RunningPlatform) -> tuple[Writer, Writer, WriterProbe]:
    svc = p.service(PROJECT, PRI)
    pooled = svc["connection_info"]["pgbouncer"][0]
    direct = Writer(svc["service_uri"])
    pool = Writer(pooled, prepare_threshold=None)
    probe = WriterProbe(lambda: node_dsns(p))
    for t in (direct, pool, probe):
        t.start()
    try:
        wait_for("acknowledged writes through both URIs",
                 lambda: len(direct.log.ok) > 20 and len(pool.log.ok) > 20, timeout=60)
    except AssertionError as exc:
        for t in (direct, pool, probe):
            t.stop()
        raise AssertionError(f"{exc}; direct: ok={len(direct.log.ok)} last error {direct.log.last_error}; "
                             f"pooled: ok={len(pool.log.ok)} last error {pool.log.last_error}") from None
    return direct, pool, probe


def stop_load(direct: Writer, pool: Writer, probe: WriterProbe) -> None:
    direct.stop()
    pool.stop()
    probe.stop()
    assert probe.two_writers == [], f"two writable nodes at once: {probe.two_writers[:3]}"
    state.setdefault("ok", set()).update(direct.log.ok, pool.log.ok)
    state.setdefault("failed", set()).update(direct.log.failed, pool.log.failed)


def assert_nothing_lost(p: RunningPlatform, allowed_lost: set[str] | None = None) -> None:
    stored = all_ids(p.service(PROJECT, PRI)["service_uri"])
    lost = state["ok"] - stored - (allowed_lost or set())
    assert not lost, f"{len(lost)} acknowledged writes lost"
    assert not (state["failed"] & stored), "a write reported as failed is present"


def test_setup_with_the_cli(platform: RunningPlatform):
    p = platform
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "business-4", "--cloud", PRI_CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "180")
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "business-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    assert state_role(p, REC)["disaster_recovery_role"] == "passive"
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "240")
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    pri, rec = p.service(PROJECT, PRI), p.service(PROJECT, REC)
    assert rec["service_uri"] == pri["service_uri"], "one Service URI for the pair"
    standby = next(c for c in rec["components"] if c["usage"] == "disaster_recovery")
    pw = pri["service_uri_params"]["password"]
    standby_uri = f"postgres://avnadmin:{pw}@{standby['host']}:{standby['port']}/defaultdb?sslmode=require"

    def replicated() -> bool:
        with psycopg.connect(standby_uri, connect_timeout=5) as conn:
            return conn.execute("SELECT to_regclass('acked_writes') IS NOT NULL").fetchone()[0]

    wait_for("the table to reach the recovery region", replicated, timeout=60)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), psycopg.connect(standby_uri) as conn:
        conn.execute("INSERT INTO acked_writes(id) VALUES ('nope')")
    integ = json.loads(p.avn("service", "integration-list", PRI, "--project", PROJECT, "--json").stdout)
    assert [(i["source_service"], i["dest_service"]) for i in integ] == [(PRI, REC)]


def test_switchover_and_switchback_lose_nothing(platform: RunningPlatform):
    p = platform
    load = start_load(p)
    p.avn("service", "update", REC, "--disaster-recovery-role", "active", "--project", PROJECT)
    over = wait_operation(p, REC, "switchover")
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    n = len(load[0].log.ok)
    wait_for("writes to continue after the switchover", lambda: len(load[0].log.ok) > n + 20, timeout=60)
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    back = wait_operation(p, PRI, "switchback")
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    n = len(load[1].log.ok)
    wait_for("writes to continue after the switchback", lambda: len(load[1].log.ok) > n + 20, timeout=60)
    pooled_errors = len(load[1].log.failed) + len(load[1].log.unknown)
    stop_load(*load)
    assert_nothing_lost(p)
    print(f"switchover pause {over['write_pause_s']}s, switchback pause {back['write_pause_s']}s, "
          f"pooled-URI client errors {pooled_errors}")
    assert pooled_errors == 0, "the pooled URI must carry planned moves without a client error"


def patroni_views(p: RunningPlatform) -> dict[str, dict]:
    """GET /patroni of every node of both services: {node: {role, timeline, postmaster_start_time,
    state}} (only what a restart of Patroni must leave as it was)."""
    from pgcrdr.agentapi.client import AgentClient

    settings = p.settings()
    out = {}
    for name, cloud in ((PRI, PRI_CLOUD), (REC, REC_CLOUD)):
        region = settings.region(cloud)
        assert region is not None
        client = AgentClient(settings.agent_url(region), p.agent_token(), timeout=5, verify=settings.agent_verify)
        try:
            nodes = client.get_cluster(cluster_id(PROJECT, name)).nodes
        finally:
            client.close()
        for n in nodes:
            try:
                v = httpx.get(f"http://{n.host}:{n.rest_port}/patroni", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                v = {}
            out[n.name] = {k: v.get(k) for k in ("role", "timeline", "postmaster_start_time", "state")}
    return out


def patroni_pids(p: RunningPlatform) -> dict[str, int]:
    """{node: pid of its Patroni} from the agents' pid files (run/<node>.patroni.pid)."""
    out = {}
    for cloud in (PRI_CLOUD, REC_CLOUD):
        region = p.settings().region(cloud)
        assert region is not None
        for f in (p.settings().region_dir(region) / "run").glob("*.patroni.pid"):
            out[f.name.removesuffix(".patroni.pid")] = int(f.read_text().split()[0])
    return out


def test_patroni_restarted_right_after_a_move_changes_nothing(platform: RunningPlatform):
    """Our view and Patroni's agree after a move: every Patroni of both services SIGKILLed right
    after a switchover (PostgreSQL keeps running; the agents start Patroni again) changes no
    role, restarts no writer, rewinds nothing, and costs no write."""
    import os
    import signal

    p = platform
    load = start_load(p)
    p.avn("service", "update", REC, "--disaster-recovery-role", "active", "--project", PROJECT)
    wait_operation(p, REC, "switchover")
    logs = [log for cloud in (PRI_CLOUD, REC_CLOUD)
            for log in (p.settings().region_dir(p.settings().region(cloud)) / "clusters")  # type: ignore[arg-type]
            .glob("*/nodes/*/patroni.log")]
    killed = patroni_pids(p)
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)
    offsets = {log: log.stat().st_size for log in logs}  # what Patroni logs from here on is checked

    def settled() -> dict | None:
        pids = patroni_pids(p)
        if any(pids.get(n) in (None, old) for n, old in killed.items()):
            return None  # not every Patroni started again yet
        v = patroni_views(p)
        roles = sorted((n.startswith(cluster_id(PROJECT, REC)), x["role"]) for n, x in v.items())
        return v if all(x["state"] == "running" for x in v.values()) and roles == sorted(
            [(False, "standby_leader"), (False, "replica"), (True, "primary"), (True, "replica")]) else None

    before = wait_for("every Patroni back, the roles of the switchover", settled, timeout=90)
    time.sleep(5)  # a few HA loops of the restarted Patronis
    after = patroni_views(p)
    assert after == before, f"something changed after the restart: {before} -> {after}"
    writer = next(n for n, x in after.items() if x["role"] == "primary")
    assert after[writer]["postmaster_start_time"] is not None
    for log, offset in offsets.items():
        with open(log, errors="replace") as f:
            f.seek(offset)
            recent = f.read().splitlines()
        # "promoted self to a standby leader" is Patroni taking the standby leader role back in its
        # own bookkeeping after a restart (its postmaster keeps running): not a role change.
        bad = [ln for ln in recent if "rewind" in ln.lower() or "promoted self to leader" in ln or "Demoting" in ln]
        assert not bad, f"{log.parent.name}: {bad[:3]}"
    n = len(load[1].log.ok)
    wait_for("pooled writes to continue", lambda: len(load[1].log.ok) > n + 20, timeout=60)
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    wait_operation(p, PRI, "switchback")
    pooled_errors = len(load[1].log.failed) + len(load[1].log.unknown)
    stop_load(*load)
    assert_nothing_lost(p)
    assert pooled_errors == 0


def test_api_tab_switchover_with_bearer_token(platform: RunningPlatform):
    """The seed's API tab: PUT .../service/NAME {"disaster_recovery_role": ...} with a Bearer token."""
    p = platform
    headers = {"Authorization": f"Bearer {p.token}", "content-type": "application/json"}
    url = f"{p.api_url}/v1/project/{PROJECT}/service"
    r = httpx.put(f"{url}/{REC}", headers=headers, content='{"disaster_recovery_role": "active"}')
    assert r.status_code == 200, r.text
    assert r.json()["service"]["state"] == "REBALANCING"
    conflict = httpx.put(f"{url}/{PRI}", headers=headers, content='{"disaster_recovery_role": "active"}')
    assert conflict.status_code == 409 and "already running" in conflict.json()["message"]
    wait_operation(p, REC, "switchover")
    r = httpx.put(f"{url}/{PRI}", headers=headers, content='{"disaster_recovery_promote_to_master": true}')
    assert r.status_code == 200, r.text
    wait_operation(p, PRI, "switchback")
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}


def test_region_outage_then_failover(platform: RunningPlatform):
    p = platform
    load = start_load(p)
    p.pgcrdr("region", "down", PRI_CLOUD)
    t_down = time.monotonic()
    p.avn("service", "update", PRI, "--disaster-recovery-role", "failed", "--project", PROJECT)
    op = wait_operation(p, PRI, "failover", timeout=120)
    assert state_role(p, PRI) == {"state": "POWEROFF", "disaster_recovery_role": "failed"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    n = len(load[0].log.ok)
    wait_for("writes through the Service URI after the failover", lambda: len(load[0].log.ok) > n + 20,
             timeout=60)
    print(f"failover: writes resumed {time.monotonic() - t_down:.1f}s after the outage; "
          f"data given up: {op['data_loss']}")
    assert op["data_loss"] is not None and "bytes" in op["data_loss"]
    # Writes acknowledged by the old writer after its last replicated LSN are the reported tail.
    stop_load(*load)
    stored = all_ids(p.service(PROJECT, REC)["service_uri"])
    state["lost_in_failover"] = state["ok"] - stored
    if state["lost_in_failover"]:
        assert op["data_loss"]["bytes"], "writes were lost but the failover reported no data given up"


def test_failed_region_returns_but_never_accepts_writes(platform: RunningPlatform):
    p = platform
    p.pgcrdr("region", "up", PRI_CLOUD)
    probe = WriterProbe(lambda: node_dsns(p))
    probe.start()
    time.sleep(15)  # "Consistently": the old writer must stay read-only or down the whole time
    probe.stop()
    old_nodes = {n for n in node_dsns(p) if n.startswith(cluster_id(PROJECT, PRI))}
    assert not (probe.writers_seen & old_nodes), f"the failed primary accepted writes: {probe.writers_seen}"
    assert probe.two_writers == []
    assert state_role(p, PRI) == {"state": "POWEROFF", "disaster_recovery_role": "failed"}


def test_failback_as_the_seed_cli_tab(platform: RunningPlatform):
    p = platform
    load = start_load(p)
    # 1. Restore the primary service
    p.avn("service", "update", PRI, "--disaster-recovery-role", "passive", "--project", PROJECT)
    assert state_role(p, PRI) == {"state": "REBUILDING", "disaster_recovery_role": "passive"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    restore = wait_operation(p, PRI, "failback_restore", timeout=240)
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    assert restore["details"].get("preserved", {}).get("path"), "the failed primary's data must be kept aside"
    # 2. Promote the primary service to active
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    promote = wait_operation(p, PRI, "failback_promote")
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    n = len(load[0].log.ok)
    wait_for("writes after the failback", lambda: len(load[0].log.ok) > n + 20, timeout=60)
    stop_load(*load)
    assert_nothing_lost(p, allowed_lost=state.get("lost_in_failover", set()))
    print(f"failback takeover pause {promote['write_pause_s']}s")
    history = dr(p, PRI)["history"]
    kinds = [o["kind"] for o in history]
    for kind in ("setup", "switchover", "switchback", "failover", "failback_restore", "failback_promote"):
        assert kind in kinds
    assert all(s["duration_s"] is not None for o in history for s in o["steps"] if s["state"] == "done")
