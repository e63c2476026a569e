"""The reconciler's pure decisions, tested as values."""

from __future__ import annotations

from pgcrdr.agentapi.models import ClusterStatus, Endpoint
from pgcrdr.controlplane.decide import Observation, service_view
from pgcrdr.controlplane.records import ServiceRecord, ServiceUser


def svc(**kw) -> ServiceRecord:
    base = dict(project="p", name="s", plan="startup-4", cloud="c", cluster="s-1", create_time="t",
                update_time="t", superuser_password="x", replication_password="x", rewind_password="x",
                tls_cert_pem="", tls_key_pem="", users=[ServiceUser(username="avnadmin", password="p",
                                                                     type="primary")])
    base.update(kw)
    return ServiceRecord(**base)


def status(ready: bool, generation: int = 1, phase: str = "running", message: str | None = None) -> ClusterStatus:
    ep = Endpoint(host="127.0.0.1", port=1)
    return ClusterStatus(cluster="s-1", region="c", generation=generation, phase=phase, ready=ready,
                         message=message, primary=ep, replica=ep)


def test_rebuilding_until_first_ready():
    v = service_view(svc(), Observation(status(False, phase="creating")))
    assert (v.state, v.ever_ready) == ("REBUILDING", False)
    v = service_view(svc(), Observation(status(True)))
    assert (v.state, v.ever_ready) == ("RUNNING", True)


def test_stays_running_when_degraded_after_ready():
    v = service_view(svc(ever_ready=True, state="RUNNING"), Observation(status(False, message="node 2 down")))
    assert v.state == "RUNNING" and v.message == "node 2 down"


def test_degraded_durability_is_the_service_status_message():
    from pgcrdr.agent.decide import DEGRADED
    from pgcrdr.agentapi.models import NodeStatus
    from pgcrdr.api.serialize import node_state_json

    v = service_view(svc(plan="business-4", ever_ready=True, state="RUNNING"),
                     Observation(status(False, message=DEGRADED)))
    assert v.state == "RUNNING" and v.message is not None and v.message.startswith("durability degraded")
    node = NodeStatus(name="s-1-2", host="h", pg_port=1, rest_port=2, role="replica", state="running",
                      sync_state="sync")
    assert node_state_json(node)["sync_state"] == "sync" and node_state_json(node)["role"] == "standby"


def test_sync_replication_can_be_forced_off(monkeypatch):
    from pgcrdr.controlplane.decide import cluster_spec
    from pgcrdr.controlplane.records import ProjectRecord

    project = ProjectRecord(name="p", create_time="t", ca_cert_pem="ca", ca_key_pem="k", default_cloud="c")
    assert cluster_spec(svc(plan="business-4"), project).sync_replication is True
    monkeypatch.setenv("PGCRDR_SYNC_REPLICATION", "off")
    spec = cluster_spec(svc(plan="business-4"), project)
    assert spec.sync_replication is False and spec.node_count == 2


def test_status_for_an_older_generation_does_not_count():
    v = service_view(svc(generation=3), Observation(status(True, generation=2)))
    assert v.state == "REBUILDING"


def test_poweroff_and_power_on():
    assert service_view(svc(powered=False), Observation(status(False, phase="stopped"))).state == "POWEROFF"
    # powered on again: rebuilding until ready, even though it was ready before power-off
    v = service_view(svc(powered=True, generation=4, ever_ready=False), Observation(status(False, 4)))
    assert v.state == "REBUILDING"


def test_agent_unreachable_keeps_state_and_says_why():
    v = service_view(svc(state="RUNNING", ever_ready=True), Observation(None, agent_error="agent down"))
    assert v.state == "RUNNING" and v.message == "agent down"
