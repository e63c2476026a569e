"""A recovery copy's end is seen when its region says it is ready, not at the next tick
(decisions.md, issue 14: a recovery copy's fixed cost)."""

from __future__ import annotations

import time

from pgcrdr.agentapi.client import AgentError
from pgcrdr.agentapi.models import ClusterStatus, Endpoint
from pgcrdr.config import Settings
from pgcrdr.controlplane.reconciler import AWAIT_PASSIVE_POLL_S, Reconciler
from tests.unit.test_operation_faults import EU, US, _create, _set_running


class Region:
    """GET /clusters/NAME of a region agent: what it last saw of a cluster."""

    def __init__(self) -> None:
        self.ready = False
        self.down = False
        self.asked = 0

    def get_cluster(self, cluster: str, timeout: float | None = None) -> ClusterStatus:
        self.asked += 1
        if self.down:
            raise AgentError("unreachable: timed out")
        ep = Endpoint(host="127.0.0.1", port=1)
        return ClusterStatus(cluster=cluster, region=US, ready=self.ready, standby=True, primary=ep, replica=ep)

    def close(self) -> None:
        pass


def _copy_being_built(api, tmp_path) -> tuple[Reconciler, Region]:
    _create(api, "pg-a", EU)
    _set_running(api, "pg-a", standby=False)
    _create(api, "pg-b", US, dr_for="pg-a")
    rec = Reconciler(api.store, Settings.from_env(home=tmp_path / "h"), "token")
    region = Region()
    rec.agents = {US: region}  # type: ignore[dict-item]
    return rec, region


def test_the_tick_runs_as_soon_as_the_copy_is_ready(api, tmp_path):
    rec, region = _copy_being_built(api, tmp_path)
    try:
        assert [s.name for s in rec._awaited_passives()] == ["pg-b"]
        t0 = time.monotonic()
        rec._wait_next_tick(0.6)  # not ready: the whole interval, the copy asked every 0.2 s
        assert time.monotonic() - t0 >= 0.55 and 2 <= region.asked <= 4
        region.ready = True
        t0 = time.monotonic()
        rec._wait_next_tick(5.0)
        assert time.monotonic() - t0 < AWAIT_PASSIVE_POLL_S + 0.3
    finally:
        rec.stop()


def test_a_region_that_does_not_answer_only_waits_for_the_tick(api, tmp_path):
    rec, region = _copy_being_built(api, tmp_path)
    region.down = True
    try:
        t0 = time.monotonic()
        rec._wait_next_tick(0.5)
        assert time.monotonic() - t0 >= 0.45 and region.asked >= 1
    finally:
        rec.stop()


def test_nothing_is_asked_once_the_copy_was_seen_ready_or_the_setup_ended(api, tmp_path):
    rec, region = _copy_being_built(api, tmp_path)
    try:
        _set_running(api, "pg-b", standby=True)  # the tick recorded it ready: lag is its business now
        assert rec._awaited_passives() == []
        api.store.update_service("pgcrdr", "pg-b", lambda cur: cur.model_copy(update={"status": None}))
        assert [s.name for s in rec._awaited_passives()] == ["pg-b"]
        for op in api.store.running_operations():
            op.state = "done"
            api.store.put_operation(op)
        assert rec._awaited_passives() == []
        rec._wait_next_tick(0.3)
        assert region.asked == 0
        rec.leading = lambda: False  # a replica that does not lead calls no region
        assert rec._awaited_passives() == []
    finally:
        rec.stop()
