"""What users of Aiven's tools expect, with the real avn: the project event log (`avn events`),
access tokens (`avn user access-token create|list|revoke`) and the Prometheus metrics of a pair
whose lag moves under a write load."""

from __future__ import annotations

import json
import threading
import time

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import RunningPlatform, wait_for

PROJECT = "pgcrdr"
PRI, REC = "pg-ev", "pg-ev-dr"


def avn_events(p: RunningPlatform) -> list[dict]:
    return json.loads(p.avn("events", "--project", PROJECT, "--json", "-n", "500").stdout)


def lag_bytes(p: RunningPlatform) -> float | None:
    r = httpx.get(f"{p.api_url}/metrics", headers={"Authorization": f"Bearer {p.token}"}, timeout=30)
    r.raise_for_status()
    for fam in text_string_to_metric_families(r.text):
        if fam.name == "pgcrdr_replication_lag_bytes":
            for s in fam.samples:
                if s.labels == {"project": PROJECT, "pair": PRI, "service": REC}:
                    return s.value
    return None


def test_access_tokens_with_the_real_avn(platform: RunningPlatform):
    p = platform
    made = json.loads(p.avn("user", "access-token", "create", "--description", "x", "--max-age-seconds", "60",
                            "--json").stdout)
    (info,) = made
    full = info["full_token"]
    assert info["description"] == "x" and info["max_age_seconds"] == 60 and info["expiry_time"]

    # the new token works
    p.avn("service", "list", "--project", PROJECT, token=full)

    # list: the token (and the one in use) without any secret, only its prefix
    out = p.avn("user", "access-token", "list", "--json", token=full).stdout
    assert full not in out and p.token not in out
    tokens = json.loads(out)
    mine = next(t for t in tokens if t["token_prefix"] == full[:10])
    assert mine["description"] == "x" and mine["currently_active"] is True and "full_token" not in mine
    table = p.avn("user", "access-token", "list").stdout
    assert "TOKEN_PREFIX" in table and full[:10] in table and full not in table

    # revoke: refused at once
    out = p.avn("user", "access-token", "revoke", full[:10])
    assert out.stdout.strip() == "Revoked"
    refused = p.avn("project", "list", token=full, check=False)
    assert refused.returncode == 1 and "status 403" in refused.stderr, refused.stderr


def test_events_and_metrics_of_a_pair_under_load(platform: RunningPlatform):
    p = platform
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", "local-europe-west1",
          "--project", PROJECT)
    created = [e for e in avn_events(p) if e["event_type"] == "service_create" and e["service_name"] == PRI]
    assert created and "-> 200" in created[0]["event_desc"], created
    assert p.token not in json.dumps(created)
    table = p.avn("events", "--project", PROJECT).stdout
    assert "service_create" in table and PRI in table and "EVENT_TYPE" in table

    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "180")
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", "local-us-east1",
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "240")

    types = [e["event_type"] for e in avn_events(p) if e["service_name"] in (PRI, REC)]
    assert "crdr_setup_start" in types
    wait_for("the setup's end in the event log",
             lambda: "crdr_setup_done" in [e["event_type"] for e in avn_events(p)], timeout=120, interval=2)
    wait_for("the pair's lag gauge", lambda: lag_bytes(p) is not None, timeout=60)

    uri = p.service(PROJECT, PRI)["service_uri"]
    stop = threading.Event()

    def load() -> None:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS ev_load (x int, pad text)")
            while not stop.is_set():
                conn.execute("INSERT INTO ev_load SELECT g, repeat('x', 500) FROM generate_series(1, 5000) g")

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    seen: list[float] = []
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and (len(set(seen)) < 3 or max(seen) == 0):
            v = lag_bytes(p)
            if v is not None:
                seen.append(v)
            time.sleep(1)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert len(set(seen)) >= 2 and max(seen) > 0, f"the lag gauge did not move under load: {seen}"

    p.avn("service", "terminate", REC, "--force", "--project", PROJECT)
    p.avn("service", "terminate", PRI, "--force", "--project", PROJECT)
    deleted = [e["service_name"] for e in avn_events(p) if e["event_type"] == "service_delete"]
    assert REC in deleted and PRI in deleted
