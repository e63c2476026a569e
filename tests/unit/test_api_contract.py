"""The API layer against a real store, without regions: shapes the real clients need, and
refusals that change nothing. (Regions and the real avn are covered by tests/e2e.)"""

from __future__ import annotations

import pytest





def create(api, name="pg-a", **kw):
    body = {"service_name": name, "service_type": "pg", "plan": "startup-4", "cloud": None, "user_config": {},
            "service_integrations": [], "static_ips": [], "termination_protection": False}
    body.update(kw)
    return api.post("/v1/project/pgcrdr/service", json=body)


def assert_error(resp, status, fragment):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert fragment in body["message"], body
    assert body["errors"][0]["status"] == status
    assert "error" not in body or resp.status_code >= 400


def test_service_object_has_every_field_clients_read(api):
    resp = create(api)
    assert resp.status_code == 200, resp.text
    svc = resp.json()["service"]
    for key in ("service_name", "service_type", "state", "cloud_name", "plan", "create_time", "update_time",
                "maintenance", "connection_info", "service_uri_params", "components", "users", "backups",
                "service_integrations", "node_states", "disaster_recovery_role", "metadata"):
        assert key in svc, key
    assert svc["state"] == "REBUILDING"
    assert svc["cloud_name"] == "local-europe-west1"  # null cloud -> project default
    assert svc["service_uri"].startswith("postgres://avnadmin:")
    assert svc["service_uri"].endswith("sslmode=require")
    assert all(isinstance(v, str) for v in svc["service_uri_params"].values())
    assert all(isinstance(v, str) for v in svc["connection_info"]["pg_params"][0].values())
    assert isinstance(svc["disk_space_mb"], int)
    assert svc["components"][0]["component"] == "pg" and svc["components"][0]["usage"] == "primary"
    assert svc["users"][0] == {"username": "avnadmin", "password": svc["users"][0]["password"], "type": "primary"}
    assert svc["maintenance"]["dow"] == "sunday"
    assert svc["create_time"].endswith("Z")


@pytest.mark.parametrize(
    "kw,status,fragment",
    [
        ({"plan": "hobbyist"}, 400, "Plan 'hobbyist' is not available"),
        ({"cloud": "aws-mars-1"}, 400, "Cloud 'aws-mars-1' is not available; available clouds: local-europe-west1"),
        ({"service_type": "mysql"}, 400, "Unknown service type 'mysql'"),
        ({"service_name": "Bad_Name"}, 400, "Invalid service_name"),
        ({"user_config": {"pg_version": "13"}}, 400, "pg_version 13 is not available"),
        ({"user_config": {"nope": 1}}, 400, "unknown key(s) nope"),
        ({"user_config": "x"}, 400, "user_config must be a JSON object"),
        ({"termination_protection": "yes"}, 400, "termination_protection must be true or false"),
    ],
)
def test_bad_create_is_refused_and_changes_nothing(api, kw, status, fragment):
    assert_error(create(api, **kw), status, fragment)
    assert api.get("/v1/project/pgcrdr/service").json()["services"] == []


def test_duplicate_and_unknown(api):
    assert create(api).status_code == 200
    assert_error(create(api), 409, "Service pg-a already exists")
    assert_error(api.get("/v1/project/pgcrdr/service/nope"), 404, "Service nope does not exist")
    assert_error(api.get("/v1/project/other/service"), 404, "Project other does not exist")
    assert_error(api.put("/v1/project/pgcrdr/service/nope", json={"plan": "startup-4"}), 404, "does not exist")


def test_malformed_json_and_wrong_types(api):
    r = api.post("/v1/project/pgcrdr/service", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(r, 400, "Malformed JSON")
    assert_error(api.post("/v1/project/pgcrdr/service", json=[1, 2]), 400, "must be a JSON object")
    assert_error(create(api, plan=5), 400, "Plan 5 is not available")


def test_auth(api):
    no_auth = {"Authorization": ""}
    assert_error(api.get("/v1/project", headers=no_auth), 401, "Authentication required")
    assert_error(api.get("/v1/project", headers={"Authorization": "aivenv1 wrong"}), 403, "Invalid")
    assert_error(api.get("/v1/project", headers={"Authorization": "Basic abc"}), 401, "Unsupported")
    token = api.creds.token
    assert api.get("/v1/project", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # avn sends GETs with content-type application/octet-stream and an empty body, TF adds ?limit=999
    r = api.get("/v1/project?limit=999&include_secrets=true", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    # the token is stored hashed
    assert token not in api.store.list_tokens()[0].token_hash


def test_login(api):
    email = api.creds.email
    r = api.post("/v1/userauth", json={"email": email, "password": api.creds.password}, headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["token"]
    t = r.json()["token"]
    assert api.get("/v1/project", headers={"Authorization": f"aivenv1 {t}"}).status_code == 200
    bad = api.post("/v1/userauth", json={"email": email, "password": "wrong"}, headers={"Authorization": ""})
    assert_error(bad, 403, "Authentication failed")


def test_update_merges_user_config_and_refuses_unsafe_changes(api):
    create(api, user_config={"ip_filter": ["0.0.0.0/0"]})
    r = api.put("/v1/project/pgcrdr/service/pg-a", json={"plan": "startup-4", "user_config": {}})
    assert r.status_code == 200
    assert r.json()["service"]["user_config"] == {"ip_filter": ["0.0.0.0/0"], "pg_version": "15"}
    assert_error(api.put("/v1/project/pgcrdr/service/pg-a", json={"plan": "business-4"}), 400,
                 "is not supported yet")
    assert_error(api.put("/v1/project/pgcrdr/service/pg-a", json={"cloud": "local-us-east1"}), 400,
                 "create a disaster-recovery copy")
    r = api.put("/v1/project/pgcrdr/service/pg-a", json={"powered": False, "user_config": {}, "plan": "startup-4"})
    assert r.json()["service"]["state"] == "POWEROFF"
    assert_error(api.post("/v1/project/pgcrdr/service/pg-a/db", json={"database": "x"}), 409, "powered off")


def test_termination_protection(api):
    create(api, termination_protection=True)
    assert_error(api.delete("/v1/project/pgcrdr/service/pg-a"), 403, "protected against termination")
    assert api.put("/v1/project/pgcrdr/service/pg-a", json={"termination_protection": False}).status_code == 200
    assert api.delete("/v1/project/pgcrdr/service/pg-a").status_code == 200
    assert_error(api.get("/v1/project/pgcrdr/service/pg-a"), 404, "does not exist")


def test_databases_and_users(api):
    create(api)
    assert api.post("/v1/project/pgcrdr/service/pg-a/db", json={"database": "app"}).status_code == 200
    assert_error(api.post("/v1/project/pgcrdr/service/pg-a/db", json={"database": "app"}), 409, "already exists")
    assert_error(api.post("/v1/project/pgcrdr/service/pg-a/db", json={"database": "bad name"}), 400, "Invalid")
    dbs = api.get("/v1/project/pgcrdr/service/pg-a/db").json()["databases"]
    assert [d["database_name"] for d in dbs] == ["defaultdb", "app"]
    u = api.post("/v1/project/pgcrdr/service/pg-a/user", json={"username": "app_user"}).json()["user"]
    assert u["type"] == "normal" and len(u["password"]) > 16
    assert_error(api.post("/v1/project/pgcrdr/service/pg-a/user", json={"username": "postgres"}), 400, "reserved")
    assert_error(api.post("/v1/project/pgcrdr/service/pg-a/user", json={"username": "app_user"}), 409, "exists")


def test_catalog_endpoints(api):
    st = api.get("/v1/project/pgcrdr/service_types").json()["service_types"]["pg"]
    plans = {p["service_plan"]: p for p in st["service_plans"]}
    assert plans["startup-4"]["node_count"] == 1 and plans["business-4"]["node_count"] == 2
    assert plans["premium-4"]["node_count"] == 3
    assert all("type" in p for p in st["user_config_schema"]["properties"].values())
    one = api.get("/v1/project/pgcrdr/service-types/pg").json()
    assert "user_config_schema" in one and "service_types" not in one
    assert_error(api.get("/v1/project/pgcrdr/service-types/kafka"), 404, "does not exist")
    plan = api.get("/v1/project/pgcrdr/service-types/pg/plans/startup-4").json()
    assert plan["disk_space_mb"] == 81920
    assert api.get("/v1/project//clouds", headers={"Authorization": ""}).status_code == 200
    assert "BEGIN CERTIFICATE" in api.get("/v1/project/pgcrdr/kms/ca").json()["certificate"]
    assert api.get("/v1/openapi.json").status_code == 200
    assert_error(api.get("/v1/nothing-here"), 404, "No such API endpoint")


def test_max_connections_other_than_the_default_is_refused_clearly(api):
    body = {"service_name": "pg-mc", "service_type": "pg", "plan": "startup-4", "cloud": "local-europe-west1",
            "user_config": {"pg": {"max_connections": 200}}}
    r = api.post("/v1/project/pgcrdr/service", json=body)
    assert r.status_code == 400 and "max_connections is 100" in r.json()["message"], r.text
    assert api.get("/v1/project/pgcrdr/service/pg-mc").status_code == 404  # nothing was created
    body["user_config"] = {"pg": {"max_connections": 100, "work_mem": 8}}
    assert api.post("/v1/project/pgcrdr/service", json=body).status_code == 200


def test_tokens_never_start_with_a_dash():
    from pgcrdr.security.tokens import new_token

    tokens = [new_token(4) for _ in range(2000)]  # 1 in 64 token_urlsafe values starts with "-"
    assert not any(t.startswith("-") for t in tokens) and len(set(tokens)) > 1900
