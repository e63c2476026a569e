"""Setup the Terraform way: two existing services paired with POST /integration (the real avn
`service integration-create`), then the passive one terminated: the primary carries on alone."""

from __future__ import annotations

import json

import psycopg

from tests.helpers import RunningPlatform, wait_for

PROJECT = "pgcrdr"
A, B = "pg-int-a", "pg-int-b"


def test_pair_existing_services_with_an_integration(platform: RunningPlatform):
    p = platform
    p.avn("service", "create", A, "--service-type", "pg", "--plan", "startup-4", "--cloud", "local-europe-west1",
          "--project", PROJECT)
    p.avn("service", "create", B, "--service-type", "pg", "--plan", "startup-4", "--cloud", "local-us-east1",
          "--project", PROJECT)
    p.avn("service", "wait", A, B, "--project", PROJECT, "--timeout", "180")
    uri = p.service(PROJECT, A)["service_uri"]
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE paired AS SELECT 7 AS x")
    p.avn("service", "integration-create", "-t", "disaster_recovery", "-s", A, "-d", B, "--project", PROJECT)
    svc_b = p.service(PROJECT, B)
    assert (svc_b["state"], svc_b["disaster_recovery_role"]) == ("REBUILDING", "passive")
    p.avn("service", "wait", B, "--project", PROJECT, "--timeout", "240")
    svc_b = p.service(PROJECT, B)
    assert svc_b["disaster_recovery_role"] == "passive" and svc_b["service_uri"] == uri
    standby = next(c for c in svc_b["components"] if c["usage"] == "disaster_recovery")
    pw = svc_b["service_uri_params"]["password"]
    standby_uri = f"postgres://avnadmin:{pw}@{standby['host']}:{standby['port']}/defaultdb?sslmode=require"

    def copied() -> bool:
        with psycopg.connect(standby_uri, connect_timeout=5) as conn:
            return conn.execute("SELECT x FROM paired").fetchone()[0] == 7

    wait_for("A's data on B (B is now a copy of A)", copied, timeout=60)
    listing = json.loads(p.avn("service", "integration-list", B, "--project", PROJECT, "--json").stdout)
    assert [(i["source_service"], i["dest_service"], i["integration_type"]) for i in listing] == \
        [(A, B, "disaster_recovery")]

    out = p.avn("service", "terminate", A, "--force", "--project", PROJECT, check=False)
    assert out.returncode == 1 and "terminate the passive recovery service first" in out.stderr
    p.avn("service", "terminate", B, "--force", "--project", PROJECT)
    svc_a = p.service(PROJECT, A)
    assert svc_a["disaster_recovery_role"] is None and svc_a["service_integrations"] == []
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("INSERT INTO paired VALUES (8)")
    p.avn("service", "terminate", A, "--force", "--project", PROJECT)
