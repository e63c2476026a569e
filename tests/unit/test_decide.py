"""The reconciler's pure decisions, tested as values."""

from __future__ import annotations

from pgcrdr.agent.models import ClusterStatus, Endpoint
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
