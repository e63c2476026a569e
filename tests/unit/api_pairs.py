"""A CRDR pair on the API's real store (no regions), for unit tests of the API layer: services
created through the API, then marked RUNNING and in sync as a region would report them."""

from __future__ import annotations

from pgcrdr.agentapi.models import ClusterStatus, Endpoint

PROJECT = "pgcrdr"
P = f"/v1/project/{PROJECT}"


def create(api, name, cloud="local-europe-west1", dr_for=None):
    body = {"service_name": name, "service_type": "pg", "plan": "startup-4", "cloud": cloud, "user_config": {}}
    if dr_for:
        body["service_integrations"] = [{"integration_type": "disaster_recovery", "source_service": dr_for}]
    r = api.post(f"{P}/service", json=body)
    assert r.status_code == 200, r.text


def set_running(api, name, standby=False):
    ep = Endpoint(host="127.0.0.1", port=1)
    status = ClusterStatus(cluster=name, region="r", ready=True, standby=standby, primary=ep, replica=ep,
                           generation=99)
    api.store.update_service("pgcrdr", name, lambda cur: cur.model_copy(
        update={"state": "RUNNING", "ever_ready": True, "status": status}))


def finish_operations(api):
    for op in api.store.running_operations():
        api.store.put_operation(op.model_copy(update={"state": "done"}))


def everything(api) -> list:
    """All the API shows of the project's services, byte for byte, and the store's raw records."""
    out = []
    for name in ("pg-primary", "pg-primary-dr"):
        out.append(api.get(f"{P}/service/{name}").content)
        out.append(api.get(f"{P}/service/{name}/disaster-recovery").content)
    for records in (api.store.list_services(PROJECT), api.store.list_operations(PROJECT),
                    api.store.list_integrations(PROJECT)):
        out.append([r.model_dump_json() for r in records])
    return out


def assert_error(resp, status, fragment=""):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert fragment in body["message"], body
    assert body["errors"] == [{"message": body["message"], "status": status}]
