"""The served OpenAPI spec documents what avn and Terraform really send and read (api-contract.md)."""

from __future__ import annotations

import pytest

from pgcrdr.cli.main import _print_banner

# Bodies observed from avn 4.18.0 and read in the Terraform provider (api-contract.md 2, 3, 5).
CLIENT_BODIES = {
    ("post", "/v1/userauth"): [{"email": "admin@pgcrdr.local", "password": "pw"},
                               {"email": "a@b", "password": "pw", "otp": "123456", "tenant": "aiven"}],
    ("post", "/v1/project/{project}/service"): [
        {"cloud": "local-us-east1", "plan": "startup-4",
         "service_integrations": [{"integration_type": "disaster_recovery", "source_service": "pg-primary"}],
         "service_name": "pg-dr", "service_type": "pg", "static_ips": [], "termination_protection": False,
         "user_config": {}},
        {"cloud": None, "plan": "startup-4", "service_name": "pg-x", "service_type": "pg", "static_ips": [],
         "termination_protection": False, "user_config": {"pg_version": "15"}, "disk_space_mb": 102400},
        {"cloud": "local-europe-west1", "plan": "startup-4", "project_vpc_id": None, "service_integrations": [],
         "service_name": "pg-primary", "service_type": "pg", "termination_protection": False,
         "disk_space_mb": 81920, "user_config": {}, "static_ips": [], "tech_emails": [],
         "maintenance": {"dow": "sunday", "time": "04:00:00"}},
        {"cloud": "local-us-east1", "plan": "startup-4", "project_vpc_id": None,
         "service_integrations": [{"integration_type": "disaster_recovery", "source_service": "pg-primary",
                                   "user_config": {}}],
         "service_name": "pg-dr", "service_type": "pg", "termination_protection": False, "user_config": None,
         "static_ips": [], "tech_emails": [], "tags": {"team": "db"}, "copy_tags": False,
         "some_future_field": {"x": 1}},
    ],
    ("put", "/v1/project/{project}/service/{service}"): [
        {"disaster_recovery_role": "active", "plan": "startup-4", "user_config": {}},
        {"plan": "startup-4", "powered": False, "user_config": {}},
        {"maintenance": {"dow": "monday", "time": "01:00:00"}, "plan": "startup-4",
         "termination_protection": False, "user_config": {"pg_version": "15"}},
        {"cloud": "local-europe-west1", "plan": "startup-4", "maintenance": {"dow": "sunday", "time": "04:00:00"},
         "project_vpc_id": None, "powered": True, "termination_protection": False, "disk_space_mb": 81920,
         "user_config": {}, "tech_emails": []},
        {"disaster_recovery_promote_to_master": True},
        {"disaster_recovery_role": "passive", "failback_source": "rewind"},
    ],
    ("post", "/v1/project/{project}/integration"): [
        {"dest_endpoint_id": None, "dest_service": "pg-dr", "integration_type": "disaster_recovery",
         "source_endpoint_id": None, "source_service": "pg-primary", "user_config": {}},
        {"integration_type": "disaster_recovery", "source_service": "pg-primary", "dest_service": "pg-dr"},
    ],
    ("put", "/v1/project/{project}/integration/{integration_id}"): [{"user_config": {}}],
    ("post", "/v1/project/{project}/service/{service}/db"): [{"database": "appdb"}],
    ("post", "/v1/project/{project}/service/{service}/user"): [{"username": "app"}],
    ("put", "/v1/project/{project}/service/{service}/tags"): [{"tags": {}}, {"tags": {"k": "v"}}],
    ("post", "/v1/project"): [{"project": "other"}],
    # avn user access-token create|update (aiven-client 4.x client.access_token_create/update)
    ("post", "/v1/access_token"): [
        {"description": "ci", "extend_when_used": False, "max_age_seconds": None},
        {"description": "deploy bot", "extend_when_used": True, "max_age_seconds": 3600},
    ],
    ("put", "/v1/access_token/{token_prefix}"): [{"description": "renamed"}],
}


@pytest.fixture()
def spec(api):
    return api.get("/v1/openapi.json").json()


def _validator(spec: dict, method: str, path: str):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    ref = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return jsonschema_rs.Draft202012Validator({"$ref": ref, "components": spec["components"]})


@pytest.mark.parametrize(("method", "path"), list(CLIENT_BODIES))
def test_what_clients_send_is_valid_by_the_spec(spec, method, path):
    validator = _validator(spec, method, path)
    for body in CLIENT_BODIES[(method, path)]:
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (body, errors)


def test_schema_invalid_bodies_are_invalid_by_the_spec(spec):
    create = _validator(spec, "post", "/v1/project/{project}/service")
    base = {"service_name": "pg-x", "service_type": "pg", "plan": "startup-4"}
    assert create.is_valid(base)
    for bad in ({"service_name": "pg-x\n"}, {"plan": "hobbyist"}, {"cloud": "aws-mars-1"},
                {"user_config": {"pg": {"max_connections": 50}}}, {"maintenance": {"dow": "someday"}},
                {"disk_space_mb": "80"}, {"termination_protection": None}):
        assert not create.is_valid({**base, **bad}), bad
    update = _validator(spec, "put", "/v1/project/{project}/service/{service}")
    assert not update.is_valid({"disaster_recovery_role": "primary"})
    assert not update.is_valid({"failback_source": "rewind"})  # goes with role passive only


def test_access_token_bodies_the_route_refuses_are_invalid_by_the_spec(spec):
    create = _validator(spec, "post", "/v1/access_token")
    for bad in ({}, {"description": ""}, {"description": " \t"}, {"description": "x" * 1001},
                {"description": "ci", "max_age_seconds": 0}, {"description": "ci", "max_age_seconds": True},
                {"description": "ci", "max_age_seconds": 10 * 365 * 24 * 3600 + 1},
                {"description": "ci", "extend_when_used": "yes"},
                {"description": "ci", "extend_when_used": True},
                {"description": "ci", "extend_when_used": True, "max_age_seconds": None}):
        assert not create.is_valid(bad), bad
    assert create.is_valid({"description": "ci", "extend_when_used": None, "max_age_seconds": 60})


def test_events_and_tokens_document_what_avn_reads(spec):
    def ok_schema(method, path):
        ref = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]

    events = spec["paths"]["/v1/project/{project}/events"]["get"]
    limit = next(p for p in events["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["default"] == 100
    assert {"400", "404"} <= set(events["responses"])
    assert "events" in ok_schema("get", "/v1/project/{project}/events")["required"]
    assert "tokens" in ok_schema("get", "/v1/access_token")["required"]
    created = ok_schema("post", "/v1/access_token")  # avn reads the created token's fields at the top level
    assert {"full_token", "token_prefix", "expiry_time", "max_age_seconds", "extend_when_used"} <= set(
        created["required"])
    assert {"404", "409"} <= set(spec["paths"]["/v1/access_token/{token_prefix}"]["delete"]["responses"])
    assert "/metrics" not in spec["paths"]


def test_every_operation_documents_bodies_auth_and_errors(spec):
    assert set(spec["components"]["securitySchemes"]) == {"aivenv1", "bearer"}
    operations = [(m, p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert len(operations) >= 35
    public = {("post", "/v1/userauth"), ("get", "/v1/clouds"), ("get", "/v1/service_types"),
              ("get", "/v1/service_versions")}
    for method, path, op in operations:
        assert "422" not in op["responses"], (method, path)
        errors = {c: r for c, r in op["responses"].items() if c.startswith("4")}
        for response in errors.values():
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        if (method, path) in public:
            assert op["security"] == [], path
        else:
            assert op["security"] == [{"aivenv1": []}, {"bearer": []}], path
            assert {"401", "403"} <= set(errors), path
        if method in ("post", "put"):
            assert "requestBody" in op, (method, path)
            assert {"400", "413"} <= set(errors), (method, path)
    seed = spec["paths"]["/v1/project/{project}/service/{service}"]["put"]
    update = spec["components"]["schemas"]["ServiceUpdateRequest"]
    assert seed["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ServiceUpdateRequest")
    assert "disaster_recovery_role" in update["properties"]
    service = spec["paths"]["/v1/project/{project}/service/{service}"]["get"]["responses"]["200"]
    assert service["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ServiceResponse"}


def test_a_method_a_path_does_not_serve_is_405_with_every_allowed_method(api):
    r = api.request("PATCH", "/v1/project")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert r.json()["errors"][0]["status"] == 405
    r = api.request("POST", "/v1/project/pgcrdr/service/x")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, PUT"


def test_model_checked_fields_answer_400_naming_the_field(api):
    r = api.post("/v1/project/pgcrdr/service", json={"service_name": "pg-x", "service_type": "pg",
                                                       "plan": "startup-4", "disk_space_mb": "lots"})
    assert r.status_code == 400
    assert r.json()["message"].startswith("Invalid request: disk_space_mb")
    assert api.get("/v1/project/pgcrdr/service/pg-x").status_code == 404


def test_banner_try_line_carries_the_real_token(tmp_path, capsys):
    from pgcrdr.config import Settings

    _print_banner(Settings.from_env(home=tmp_path), None, "tok-123", "admin@pgcrdr.local")
    out = capsys.readouterr().out
    assert "--auth-token tok-123 project list" in out
    assert "TOKEN" not in out
