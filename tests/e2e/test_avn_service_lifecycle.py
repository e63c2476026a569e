"""The real avn CLI against a running pgcrdr with real PostgreSQL in two local regions.

Reads like a user's session: log in, look around, create a service, wait for it, use it over
TLS, power it off and on, and make every kind of mistake on the way.
"""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest

from tests.helpers import RunningPlatform, wait_for

PROJECT = "pgcrdr"
SVC = "pg-e2e"


def get_json(p: RunningPlatform, name: str) -> dict:
    return json.loads(p.avn("service", "get", name, "--project", PROJECT, "--json").stdout)


def test_login_and_projects(platform: RunningPlatform):
    env = {"AIVEN_PASSWORD": platform.admin_password}
    out = platform.avn("user", "login", platform.admin_email, env=env, token=False)  # type: ignore[arg-type]
    assert "Default project set as 'pgcrdr'" in out.stderr
    # the token login wrote is used from now on by plain `avn ...` (no --auth-token)
    creds = json.loads((platform.config_dir / "aiven-credentials.json").read_text())
    assert creds["auth_token"] and creds["user_email"] == platform.admin_email
    projects = json.loads(platform.avn("project", "list", "--json").stdout)
    assert [p["project_name"] for p in projects] == ["pgcrdr"]
    assert "Set project 'pgcrdr' as the default project" in platform.avn("project", "switch", "pgcrdr").stderr
    bad = platform.avn("project", "switch", "nope", check=False)
    assert bad.returncode == 1 and "Project 'nope' does not exist" in bad.stderr
    wrong = platform.avn("user", "login", platform.admin_email, env={"AIVEN_PASSWORD": "wrong"},
                         token=False, check=False)  # type: ignore[arg-type]
    assert wrong.returncode == 1 and "Authentication failed" in wrong.stderr


def test_catalog(platform: RunningPlatform):
    clouds = json.loads(platform.avn("cloud", "list", "--project", PROJECT, "--json").stdout)
    assert {c["cloud_name"] for c in clouds} == {"local-europe-west1", "local-us-east1"}
    assert "pg" in platform.avn("service", "types", "--project", PROJECT).stdout
    plans = platform.avn("service", "plans", "--service-type", "pg", "--cloud", "local-europe-west1",
                         "--project", PROJECT).stdout
    assert "pg:startup-4" in plans and "pg:business-4" in plans and "pg:premium-4" in plans


def test_create_wait_and_get(platform: RunningPlatform):
    platform.avn("service", "create", SVC, "--service-type", "pg", "--plan", "startup-4",
                 "--cloud", "local-europe-west1", "--project", PROJECT)
    svc = get_json(platform, SVC)
    assert svc["state"] in ("REBUILDING", "RUNNING")
    wait = platform.avn("service", "wait", SVC, "--project", PROJECT, "--timeout", "180")
    assert wait.returncode == 0
    svc = get_json(platform, SVC)
    assert svc["state"] == "RUNNING" and svc["plan"] == "startup-4" and svc["cloud_name"] == "local-europe-west1"
    assert svc["node_states"][0]["role"] == "master" and svc["node_states"][0]["state"] == "running"
    listing = platform.avn("service", "list", "--project", PROJECT).stdout
    assert SVC in listing and "RUNNING" in listing
    verbose = platform.avn("service", "get", SVC, "--project", PROJECT, "-v").stdout
    assert "pg-e2e" in verbose


def _uri(platform: RunningPlatform, *extra: str) -> str:
    return platform.avn("service", "connection-info", "pg", "uri", SVC, "--project", PROJECT, *extra).stdout.strip()


def test_connect_over_tls_and_write(platform: RunningPlatform):
    uri = _uri(platform)
    assert uri.startswith("postgres://avnadmin:") and uri.endswith("sslmode=require")
    svc = platform.service(PROJECT, SVC)
    api_port = int(platform.api_url.rsplit(":", 1)[1])
    # the Service URI is served by the control plane, outside every region
    assert api_port + 100 <= int(svc["service_uri_params"]["port"]) < api_port + 1000
    pooled = svc["connection_info"]["pgbouncer"][0]
    with psycopg.connect(uri, connect_timeout=10) as conn:
        assert conn.info.pgconn.ssl_in_use
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 100
    # the pooled URI (PgBouncer, transaction mode) reaches the same writer
    with psycopg.connect(pooled, connect_timeout=10, prepare_threshold=None) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 100
    # TLS is required: the same credentials without TLS are refused by the server
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri.replace("sslmode=require", "sslmode=disable"), connect_timeout=10)
    # the project CA verifies the server certificate
    ca = platform.avn("project", "ca-get", "--project", PROJECT, "--target-filepath",
                      str(platform.home / "ca.pem"))
    assert ca.returncode == 0
    with psycopg.connect(uri.replace("sslmode=require", "sslmode=verify-ca") + f"&sslrootcert={platform.home}/ca.pem",
                         connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_databases_and_users(platform: RunningPlatform):
    platform.avn("service", "database-create", SVC, "--dbname", "appdb", "--project", PROJECT)
    platform.avn("service", "user-create", SVC, "--username", "app_user", "--project", PROJECT)
    dbs = json.loads(platform.avn("service", "database-list", SVC, "--project", PROJECT, "--json").stdout)
    assert "appdb" in dbs and "defaultdb" in dbs
    users = platform.avn("service", "user-list", SVC, "--project", PROJECT).stdout
    assert "app_user" in users and "avnadmin" in users
    uri = _uri(platform, "-u", "app_user", "-d", "appdb")

    def can_use() -> bool:
        with psycopg.connect(uri, connect_timeout=5) as conn:
            row = conn.execute("SELECT current_user, current_database()").fetchone()
            conn.execute("CREATE TEMP TABLE t (x int)")  # PG15: public is the owner's; temp is allowed
        return row == ("app_user", "appdb")

    # the region applies the new role and database asynchronously; bounded by the reconcile loop
    wait_for("app_user to reach appdb", can_use, timeout=60)
    dup = platform.avn("service", "database-create", SVC, "--dbname", "appdb", "--project", PROJECT, check=False)
    assert dup.returncode == 1 and "Database appdb already exists" in dup.stderr


def test_power_off_and_on_keeps_data(platform: RunningPlatform):
    uri = _uri(platform)
    platform.avn("service", "update", SVC, "--power-off", "--project", PROJECT)
    assert get_json(platform, SVC)["state"] == "POWEROFF"

    def refused() -> bool:
        try:
            psycopg.connect(uri, connect_timeout=3).close()
            return False
        except psycopg.OperationalError:
            return True

    wait_for("the powered-off service to refuse connections", refused, timeout=60)
    platform.avn("service", "update", SVC, "--power-on", "--project", PROJECT)
    platform.avn("service", "wait", SVC, "--project", PROJECT, "--timeout", "180")
    with psycopg.connect(_uri(platform), connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 100


@pytest.mark.parametrize(
    "args,message",
    [
        (["service", "get", "nope"], "Service nope does not exist (status 404)"),
        (["service", "create", SVC, "--service-type", "pg", "--plan", "startup-4"], "already exists (status 409)"),
        (["service", "create", "pg-x", "--service-type", "pg", "--plan", "gold-9"], "Plan 'gold-9' is not available"),
        (["service", "create", "pg-x", "--service-type", "pg", "--plan", "startup-4", "--cloud", "aws-nowhere"],
         "Cloud 'aws-nowhere' is not available"),
        (["service", "create", "pg-x", "--service-type", "mysql", "--plan", "startup-4"],
         "Unknown service type 'mysql'"),
        (["service", "update", "pg-nope", "--power-off"], "Service pg-nope does not exist"),
        (["service", "create", "pg-x", "--service-type", "pg", "--plan", "startup-4", "-c", "pg_version=11"],
         "v11 is not available"),  # avn checks GET service_versions itself
    ],
)
def test_bad_input_gets_a_clear_error_and_changes_nothing(platform: RunningPlatform, args, message):
    before = platform.avn("service", "list", "--project", PROJECT, "--json").stdout
    out = platform.avn(*args, "--project", PROJECT, check=False)
    assert out.returncode == 1
    assert message in out.stderr + out.stdout, out.stderr
    assert "Traceback" not in out.stderr
    after = platform.avn("service", "list", "--project", PROJECT, "--json").stdout
    assert [s["service_name"] for s in json.loads(before)] == [s["service_name"] for s in json.loads(after)]


def test_wrong_project_and_token(platform: RunningPlatform):
    out = platform.avn("service", "list", "--project", "other", check=False)
    assert out.returncode == 1 and "Project other does not exist" in out.stderr
    out = platform.avn("service", "list", "--project", PROJECT, token="not-a-token", check=False)
    assert out.returncode == 1 and "Invalid or expired API token" in out.stderr
    r = httpx.post(f"{platform.api_url}/v1/project/{PROJECT}/service", content=b'{"service_name": ',
                   headers={"Authorization": f"Bearer {platform.token}", "content-type": "application/json"})
    assert r.status_code == 400 and "Malformed JSON" in r.json()["message"]


def test_terminate_removes_everything(platform: RunningPlatform):
    svc = platform.service(PROJECT, SVC)
    cluster_dirs = list((platform.home / "regions" / "local-europe-west1" / "clusters").iterdir())
    assert cluster_dirs
    platform.avn("service", "terminate", SVC, "--force", "--project", PROJECT)
    gone = platform.avn("service", "get", SVC, "--project", PROJECT, check=False)
    assert gone.returncode == 1 and "does not exist" in gone.stderr

    def removed() -> bool:
        return not any((platform.home / "regions" / "local-europe-west1" / "clusters").iterdir())

    wait_for("the service's files to be removed from its region", removed, timeout=120)
    port = int(svc["service_uri_params"]["port"])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=port, user="avnadmin", dbname="defaultdb", connect_timeout=3)
