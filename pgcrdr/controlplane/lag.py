"""Replication lag over recent minutes, kept in memory for the console's chart.

Nothing else records lag over time: the store holds only the last observed status of each
service. The reconciler already observes both regions every tick, so after each tick it hands
the services to :meth:`LagHistory.sample`, which keeps a bounded ring of samples per CRDR pair
(one sample a second at most, the last ``keep_s`` seconds). The ring is lost when the control
plane restarts; that is acceptable for a chart of "recent minutes" and costs no writes.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass

from pgcrdr.agentapi.lsn import parse_lsn
from pgcrdr.controlplane.records import ServiceRecord


@dataclass(frozen=True)
class LagSample:
    t: float  # unix time of the observation
    passive: str | None  # the service replicating (None: no passive side, e.g. after a failover)
    lag_bytes: int | None
    lag_seconds: float | None


def pair_key(svc: ServiceRecord) -> str | None:
    """Pairs are named after their primary; a service outside a pair has no key."""
    if svc.dr_peer is None:
        return None
    return svc.dr_peer if svc.dr_kind == "recovery" else svc.name


def lsn_int(lsn: str | None) -> int | None:
    """An LSN as a number; None for none."""
    return parse_lsn(lsn) if lsn else None


def pair_lag(a: ServiceRecord, b: ServiceRecord, t: float) -> LagSample:
    """The lag of the pair's passive side (pure): bytes between the active writer's current LSN
    and what the passive side has replayed, as the two regions last reported them (observed a
    moment apart in one tick, so a small value is noise), and the passive side's replay delay."""
    passive = next((s for s in (a, b) if s.dr_role == "passive"), None)
    active = next((s for s in (a, b) if s.dr_role == "active"), None)
    if passive is None or passive.status is None or passive.status.lsn is None:
        return LagSample(t, passive.name if passive else None, None, None)
    plsn = passive.status.lsn
    lag_bytes = None
    wlsn = active.status.lsn if active is not None and active.status is not None else None
    written = lsn_int(wlsn.current_lsn) if wlsn is not None and not wlsn.in_recovery else None
    replayed = lsn_int(plsn.replay_lsn or plsn.receive_lsn)
    if written is not None and replayed is not None:
        lag_bytes = max(0, written - replayed)
    return LagSample(t, passive.name, lag_bytes, plsn.lag_seconds)


class LagHistory:
    def __init__(self, keep_s: float = 900.0, min_interval_s: float = 1.0):
        self.keep_s = keep_s
        self.min_interval_s = min_interval_s
        self._rings: dict[tuple[str, str], deque[LagSample]] = {}
        self._lock = threading.Lock()

    def record(self, project: str, pair: str, sample: LagSample) -> None:
        with self._lock:
            ring = self._rings.setdefault((project, pair), deque())
            if ring and sample.t - ring[-1].t < self.min_interval_s:
                return
            ring.append(sample)
            while ring and ring[0].t < sample.t - self.keep_s:
                ring.popleft()

    def sample(self, services: list[ServiceRecord], now: float) -> None:
        """Record one sample per pair from the services as the reconciler just observed them."""
        by_name = {(s.project, s.name): s for s in services if not s.deleting}
        for svc in by_name.values():
            key = pair_key(svc)
            peer = by_name.get((svc.project, svc.dr_peer or ""))
            if key != svc.name or peer is None:
                continue  # each pair once, from its primary
            self.record(svc.project, key, pair_lag(svc, peer, now))
        with self._lock:  # forget pairs that no longer exist
            live = {(s.project, pair_key(s)) for s in by_name.values()}
            for k in [k for k in self._rings if k not in live]:
                del self._rings[k]

    def samples(self, project: str, pair: str, since: float | None = None) -> list[dict]:
        with self._lock:
            ring = list(self._rings.get((project, pair), ()))
        return [asdict(s) for s in ring if since is None or s.t > since]
