"""The failover drill's outage: every node of one service SIGKILLed by its region's agent (the
agent's kill drill), held down, then released once the failover has fenced the service.

Scoped to one cluster on purpose: on a fork drill the production pair shares the region (the
fork is made in the primary's cloud), so a region outage would hit production. The control
plane is not asked to do it: a real outage is not announced to it either, it finds out.
"""

from __future__ import annotations

from typing import Any

from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.config import Settings
from pgcrdr.controlplane.services import cluster_id

# Held down this long at most: long past any failover, so the killed writer cannot come back
# before it is fenced; a drill that dies before releasing it leaves it down no longer than this.
OUTAGE_HOLD_S = 900.0


class OutageFailed(RuntimeError):
    pass


def kill_order(svc: dict[str, Any]) -> list[str]:
    """Standbys first, the writer last: killed the other way, a standby could be promoted in the
    region between the two kills and the outage would not be one."""
    nodes = svc.get("node_states") or []
    return [n["name"] for n in sorted(nodes, key=lambda n: (n.get("role") == "master", n["name"]))]


class AgentOutage:
    def __init__(self, settings: Settings, agent_token: str, project: str, hold_s: float = OUTAGE_HOLD_S):
        self.settings, self.agent_token, self.project, self.hold_s = settings, agent_token, project, hold_s

    def _client(self, cloud: str) -> AgentClient:
        region = self.settings.region(cloud)
        if region is None:
            raise OutageFailed(f"no region {cloud} in this deployment's settings")
        return AgentClient(self.settings.agent_url(region), self.agent_token, timeout=30,
                           verify=self.settings.agent_verify)

    def _kill(self, svc: dict[str, Any], restart_after: float) -> list[int]:
        nodes = kill_order(svc)
        if not nodes:
            raise OutageFailed(f"{svc['service_name']} reports no nodes to stop")
        client = self._client(svc["cloud_name"])
        pids: list[int] = []
        try:
            for node in nodes:
                pids += client.kill_node(cluster_id(self.project, svc["service_name"]), node,
                                         restart_after=restart_after).killed_pids
        except AgentError as exc:
            raise OutageFailed(f"the agent of {svc['cloud_name']} did not take the kill drill: {exc}") from None
        finally:
            client.close()
        return pids

    def begin(self, svc: dict[str, Any]) -> str:
        pids = self._kill(svc, self.hold_s)
        return (f"killed {', '.join(kill_order(svc))} (pids {', '.join(map(str, pids)) or 'none'}); held down "
                f"for {self.hold_s:.0f} s at most")

    def end(self, svc: dict[str, Any]) -> str:
        self._kill(svc, 0.0)  # nothing runs any more: this only lifts the hold
        return "hold lifted; the failover's fence keeps the nodes down until the failback"
