"""The Terraform provider's pure parts: API JSON <-> state, request bodies, the CRDR move table,
plans that stay empty, bounded waits and the client's retry rules. Service objects come from the
real API (on a real store, without regions), so the mapping is checked against the real shape."""

from __future__ import annotations

import httpx
import pytest
from tf.types import Unknown
from tf.utils import Diagnostics

from pgcrdr.terraform import client as client_mod
from pgcrdr.terraform import mapping
from pgcrdr.terraform.client import ApiClient, ApiError, WaitTimeout, wait_until
from pgcrdr.terraform.install import install
from pgcrdr.terraform.integrations import ServiceIntegration
from pgcrdr.terraform.provider import AivenProvider
from pgcrdr.terraform.services import PgData, PgService, PostgresqlService


def schema_names(klass) -> set[str]:
    s = klass.get_schema()
    return {a.name for a in s.attributes} | {b.type_name for b in s.block_types}


@pytest.fixture()
def pg_json(api) -> dict:
    r = api.post("/v1/project/pgcrdr/service", json={
        "service_name": "pg-tf", "service_type": "pg", "plan": "startup-4", "cloud": "local-europe-west1",
        "user_config": {"pg_version": "15", "pg": {"work_mem": 8}}})
    assert r.status_code == 200, r.text
    return api.get("/v1/project/pgcrdr/service/pg-tf").json()["service"]


def test_state_has_every_schema_attribute_and_nothing_else(pg_json):
    st = mapping.service_state(pg_json)
    assert set(st) == schema_names(PgService) == schema_names(PostgresqlService)
    assert set(mapping.data_source_state(pg_json)) == schema_names(PgData)
    assert st["id"] == "pgcrdr/pg-tf" and st["plan"] == "startup-4" and st["cloud_name"] == "local-europe-west1"
    assert st["service_uri"].startswith("postgres://") and isinstance(st["service_port"], int)
    assert st["components"][0]["component"] == "pg" and st["components"][0]["port"] == str(st["service_port"])
    # Without a pg_user_config block in the state (import, or a configuration without one), the
    # server's defaults (pg_version) are not reported, so the plan stays empty.
    assert st["pg_user_config"] == [] and st["service_integrations"] == []


def test_integration_state_has_every_schema_attribute():
    integ = {"service_integration_id": "abc", "integration_type": "disaster_recovery", "source_service": "a",
             "dest_service": "b", "source_project": "p", "dest_project": "p"}
    st = mapping.integration_state(integ, "p")
    assert set(st) == schema_names(ServiceIntegration)
    assert st["id"] == "p/abc" and (st["source_service_name"], st["destination_service_name"]) == ("a", "b")


def test_user_config_block_reports_only_what_the_configuration_sets(pg_json):
    prior = [{**dict.fromkeys(mapping.USER_CONFIG_KEYS), "pg_version": "15",
              "pg": [{"work_mem": 8, "max_connections": None}]}]
    st = mapping.service_state(pg_json, prior={"pg_user_config": prior})
    assert st["pg_user_config"] == prior
    assert mapping.user_config_body(prior) == {"pg_version": "15", "pg": {"work_mem": 8}}


def test_a_fork_is_asked_for_in_pg_user_config():
    block = [{**dict.fromkeys(mapping.USER_CONFIG_KEYS), "service_to_fork_from": "pri",
              "recovery_target_time": "2026-11-30T11:30:00Z", "pg": []}]
    assert mapping.user_config_body(block) == {"service_to_fork_from": "pri",
                                               "recovery_target_time": "2026-11-30T11:30:00Z"}


def test_create_and_update_bodies():
    planned = {"service_name": "s", "plan": "startup-4", "cloud_name": "c", "termination_protection": Unknown,
               "maintenance_window_dow": Unknown, "maintenance_window_time": None, "pg_user_config": [],
               "service_integrations": [{"integration_type": "disaster_recovery", "source_service_name": "pri"}]}
    assert mapping.create_body(planned) == {
        "service_name": "s", "service_type": "pg", "plan": "startup-4", "cloud": "c", "user_config": {},
        "service_integrations": [{"integration_type": "disaster_recovery", "source_service": "pri",
                                  "user_config": {}}]}
    prior = {**planned, "termination_protection": False, "maintenance_window_dow": "sunday"}
    assert mapping.update_body(prior, prior) == {}  # never powered: a pair member's power follows its role
    assert mapping.update_body(prior, {**prior, "termination_protection": True, "plan": "startup-8"}) == \
        {"termination_protection": True, "plan": "startup-8"}


def src(role, peer_state="RUNNING"):
    return {"service_name": "pri", "disaster_recovery_role": role, "state": peer_state}


DST = {"service_name": "rec", "disaster_recovery_role": "passive", "state": "RUNNING"}


@pytest.mark.parametrize("source, peer, kind", [
    (src(None), None, "pair"),            # two unpaired services: rec becomes the copy of pri
    (src("active"), "other", "pair"),     # paired elsewhere: the server refuses with its message
    (src("active"), "rec", "adopt"),      # already in place: nothing moves
    (src("failed", "POWEROFF"), "rec", "failback"),  # after a failover: restore, then promote
    (src("passive"), "rec", "switch"),    # switchover / switchback
])
def test_dr_move_table(source, peer, kind):
    assert mapping.plan_dr_move(source, DST, peer).kind == kind


def test_roles_in_place_needs_both_running():
    assert mapping.roles_in_place(src("active"), DST)
    assert not mapping.roles_in_place(src("active"), {**DST, "state": "REBUILDING"})
    assert not mapping.roles_in_place(src("passive"), DST)
    assert not mapping.roles_in_place(None, DST)


def test_find_dr_integration_either_direction():
    items = [{"integration_type": "read_replica", "source_service": "a", "dest_service": "b"},
             {"integration_type": "disaster_recovery", "source_service": "b", "dest_service": "a", "x": 1}]
    assert mapping.find_dr_integration(items, "a", "b")["x"] == 1
    assert mapping.find_dr_integration(items, "a", "c") is None


@pytest.mark.parametrize("bad", ["p", "p/", "/s", "p/s/x", ""])
def test_import_id_format(bad):
    assert mapping.split_id("p/s", "SERVICE_NAME") == ("p", "s")
    with pytest.raises(ValueError, match="expected PROJECT/SERVICE_NAME"):
        mapping.split_id(bad, "SERVICE_NAME")


class Ctx:
    def __init__(self):
        self.diagnostics = Diagnostics()


def test_plans_stay_empty_unless_the_configuration_changed(pg_json):
    res = PgService(AivenProvider())
    prior = mapping.service_state(pg_json)
    assert res.plan(Ctx(), prior, dict(prior)) == prior  # no Unknowns: no diff
    changed = res.plan(Ctx(), prior, {**prior, "plan": "startup-8"})
    assert changed["state"] is Unknown and changed["disaster_recovery_role"] is Unknown
    ctx = Ctx()
    res.plan(ctx, prior, {**prior, "service_integrations": [{"integration_type": "disaster_recovery",
                                                               "source_service_name": "x"}]})
    assert ctx.diagnostics.has_errors()  # create-only, as in the real provider

    integ = ServiceIntegration(AivenProvider())
    st = {"id": "p/i", "integration_id": "i", "project": "p", "integration_type": "disaster_recovery",
          "source_service_name": "a", "destination_service_name": "b", "source_service_project": "p",
          "destination_service_project": "p"}
    assert integ.plan(Ctx(), st, dict(st)) == st
    swapped = integ.plan(Ctx(), st, {**st, "source_service_name": "b", "destination_service_name": "a"})
    assert swapped["integration_id"] is Unknown  # an in-place update; the new object's id is not known yet


def test_provider_needs_a_token(monkeypatch):
    monkeypatch.delenv("AIVEN_TOKEN", raising=False)
    p, diags = AivenProvider(), Diagnostics()
    p.configure_provider(diags, {"api_token": None, "api_url": None})
    assert diags.has_errors() and p.client is None
    monkeypatch.setenv("AIVEN_TOKEN", "t")
    monkeypatch.setenv("AIVEN_WEB_URL", "http://127.0.0.1:9/")
    p.configure_provider(Diagnostics(), {"api_token": None, "api_url": None})
    assert p.client is not None and p.client.base_url == "http://127.0.0.1:9"
    # The attributes win over the environment, as in the real provider (api_url is pgcrdr's own).
    p.configure_provider(Diagnostics(), {"api_token": "attr", "api_url": "http://h:1"})
    assert p.client.base_url == "http://h:1" and p.client.http.headers["Authorization"] == "aivenv1 attr"
    p.client.close()
    diags = Diagnostics()
    p.validate_config(diags, {"api_url": "h:1/v1"})
    assert diags.has_errors()


def test_wait_until_is_bounded_and_says_what_it_saw():
    now = [0.0]
    seen = []

    def check():
        seen.append(now[0])
        return False, f"state at {now[0]:.0f}s"

    with pytest.raises(WaitTimeout, match=r"after 10s waiting for the pair; last seen: state at 10s"):
        wait_until("the pair", check, timeout=10, interval=2, sleep=lambda s: now.__setitem__(0, now[0] + s),
                   clock=lambda: now[0])
    assert len(seen) == 6


def test_client_retries_only_what_is_safe(monkeypatch):
    monkeypatch.setattr(client_mod, "RETRY_WAIT_S", 0.0)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503, json={"message": "busy"})

    c = ApiClient("http://x", "t", transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError, match="busy"):
        c.request("GET", "/v1/a")
    assert calls == ["GET"] * (client_mod.RETRIES + 1)
    calls.clear()
    with pytest.raises(ApiError) as err:
        c.request("POST", "/v1/a", {})
    assert calls == ["POST"] and err.value.status == 503 and "POST /v1/a answered HTTP 503" == err.value.where


def test_install_writes_an_executable_and_a_dev_overrides_config(tmp_path):
    done = install(tmp_path / "tf", python="/usr/bin/python3")
    assert done.executable.name == "terraform-provider-aiven" and done.executable.stat().st_mode & 0o111
    assert '"/usr/bin/python3" -m pgcrdr.terraform' in done.executable.read_text()
    assert f'"aiven/aiven" = "{done.executable.parent}"' in done.cli_config.read_text()


def test_destroying_a_pair_retries_the_primary_once_its_copy_is_gone(monkeypatch):
    """Terraform deletes both services at once; the API refuses the primary (409) until the passive
    copy is gone, and the copy's DELETE may land just after the primary's."""
    from pgcrdr.terraform import services

    monkeypatch.setattr(services, "POLL_S", 0.0)
    deletes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "DELETE":
            deletes.append(1)
            if len(deletes) == 1:
                return httpx.Response(409, json={"message": "terminate the passive recovery service first"})
            return httpx.Response(200, json={"message": "being terminated"})
        if path.endswith("/pri/disaster-recovery"):
            return httpx.Response(200, json={"peer_service": "rec"})
        if path.endswith("/rec/disaster-recovery"):
            return httpx.Response(404, json={"message": "Service rec does not exist"})
        return httpx.Response(404, json={"message": "Service pri does not exist"})

    c = ApiClient("http://x", "t", transport=httpx.MockTransport(handler))
    services._delete_service(c, "p", "pri")
    assert len(deletes) == 2


def test_a_refused_delete_is_not_retried_when_the_peer_stays(monkeypatch):
    from pgcrdr.terraform import services

    monkeypatch.setattr(services, "POLL_S", 0.0)
    deletes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            deletes.append(1)
            return httpx.Response(409, json={"message": "Service pri is the passive primary service of a pair"})
        if request.url.path.endswith("/pri/disaster-recovery"):
            return httpx.Response(200, json={"peer_service": "rec"})
        return httpx.Response(200, json={"disaster_recovery_role": "active", "disaster_recovery_kind": "recovery"})

    c = ApiClient("http://x", "t", transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError, match="passive primary service of a pair"):
        services._delete_service(c, "p", "pri")
    assert len(deletes) == 1
