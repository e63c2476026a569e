"""Prometheus metrics at ``GET /metrics`` (text exposition format, ``prometheus_client``).

Everything is read from the store at scrape time by :class:`StoreCollector`, so the numbers are
the control plane's own records, the same the API serves, and survive a restart:

- per service: ``pgcrdr_service_state``, ``pgcrdr_service_dr_role`` (one series per possible
  value, 1 for the current one), ``pgcrdr_service_info``, the age of its last status from its
  region, of its last backup, the WAL archive's failures and archived segments;
- per pair: the passive side's replication lag in bytes and seconds (``lag.pair_lag``);
- per operation kind: ``pgcrdr_operation_duration_seconds`` and
  ``pgcrdr_operation_write_pause_seconds`` histograms over every operation that ended, and the
  operations running now.

Auth: the same API token as every other route (``Authorization: Bearer TOKEN``); see the README
for Prometheus's scrape config and docs/decisions.md for why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pgcrdr.controlplane.lag import pair_key, pair_lag
from pgcrdr.controlplane.records import OperationRecord, ServiceRecord
from pgcrdr.controlplane.store import Store, parse_rfc3339

STATES = ("REBUILDING", "RUNNING", "REBALANCING", "POWEROFF")
ROLES = ("active", "passive", "failed", "none")
ENDED = ("done", "failed", "undone")
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
PAUSE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...],
              series: dict[tuple[str, ...], list[float]]) -> HistogramMetricFamily:
    """A histogram family from raw observations per label set (pure)."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, values in sorted(series.items()):
        cumulative = [(_le(b), float(sum(1 for v in values if v <= b))) for b in buckets]
        cumulative.append(("+Inf", float(len(values))))
        fam.add_metric(list(key), cumulative, sum_value=float(sum(values)))
    return fam


def _le(bound: float) -> str:
    return repr(bound) if bound != int(bound) else f"{bound:.1f}"


def operation_duration(op: OperationRecord) -> float | None:
    start, end = parse_rfc3339(op.create_time), parse_rfc3339(op.finish_time)
    if start is None or end is None:
        return None
    return max(0.0, end - start)


def service_metrics(services: list[ServiceRecord], now: float) -> list[Metric]:
    """The per-service and per-pair families (pure: ``now`` is passed in)."""
    state = GaugeMetricFamily("pgcrdr_service_state", "1 for the service's current state", labels=[
        "project", "service", "state"])
    role = GaugeMetricFamily("pgcrdr_service_dr_role", "1 for the service's disaster recovery role "
                             "(none: not in a pair)", labels=["project", "service", "role"])
    info = GaugeMetricFamily("pgcrdr_service_info", "The service's plan, cloud and side of its pair",
                             labels=["project", "service", "cloud", "plan", "dr_kind", "dr_peer"])
    status_age = GaugeMetricFamily("pgcrdr_service_status_age_seconds",
                                   "Seconds since the service's region last reported its status",
                                   labels=["project", "service"])
    backup_age = GaugeMetricFamily("pgcrdr_backup_last_age_seconds",
                                   "Seconds since the service's newest backup ended", labels=["project", "service"])
    backup_ok = GaugeMetricFamily("pgcrdr_backup_repository_ok", "1 if the service's backup repository is healthy",
                                  labels=["project", "service"])
    archive_failed = CounterMetricFamily("pgcrdr_wal_archive_failures",
                                         "WAL segments the writer failed to archive (pg_stat_archiver.failed_count; "
                                         "resets when another node becomes the writer)", labels=["project", "service"])
    archived = CounterMetricFamily("pgcrdr_wal_archived", "WAL segments archived (pg_stat_archiver.archived_count)",
                                   labels=["project", "service"])
    lag_bytes = GaugeMetricFamily("pgcrdr_replication_lag_bytes", "Bytes the pair's passive side has yet to replay",
                                  labels=["project", "pair", "service"])
    lag_seconds = GaugeMetricFamily("pgcrdr_replication_lag_seconds",
                                    "Seconds the pair's passive side's replay is behind", labels=["project", "pair",
                                                                                                  "service"])
    live = [s for s in services if not s.deleting]
    by_name = {(s.project, s.name): s for s in live}
    for s in live:
        key = [s.project, s.name]
        for st in STATES:
            state.add_metric([*key, st], 1.0 if s.state == st else 0.0)
        for r in ROLES:
            role.add_metric([*key, r], 1.0 if (s.dr_role or "none") == r else 0.0)
        info.add_metric([*key, s.cloud, s.plan, s.dr_kind or "", s.dr_peer or ""], 1.0)
        if s.status_time is not None:
            status_age.add_metric(key, max(0.0, now - s.status_time))
        backup = s.status.backup if s.status is not None else None
        if backup is not None:
            backup_ok.add_metric(key, 1.0 if backup.ok else 0.0)
            ends = [t for t in (parse_rfc3339(b.stop_time) for b in backup.backups if not b.error) if t is not None]
            if ends:
                backup_age.add_metric(key, max(0.0, now - max(ends)))
            if backup.archive is not None:
                archive_failed.add_metric(key, float(backup.archive.failed_count))
                archived.add_metric(key, float(backup.archive.archived_count))
        peer = by_name.get((s.project, s.dr_peer or ""))
        if pair_key(s) == s.name and peer is not None:  # each pair once, from its primary
            sample = pair_lag(s, peer, now)
            if sample.passive is not None:
                if sample.lag_bytes is not None:
                    lag_bytes.add_metric([s.project, s.name, sample.passive], float(sample.lag_bytes))
                if sample.lag_seconds is not None:
                    lag_seconds.add_metric([s.project, s.name, sample.passive], float(sample.lag_seconds))
    return [state, role, info, status_age, backup_age, backup_ok, archive_failed, archived, lag_bytes, lag_seconds]


def operation_metrics(operations: Iterable[OperationRecord]) -> list[Metric]:
    """Histograms over the operations that ended, and the running ones (pure)."""
    durations: dict[tuple[str, ...], list[float]] = {}
    pauses: dict[tuple[str, ...], list[float]] = {}
    running: dict[str, int] = {}
    for op in operations:
        if op.state == "running":
            running[op.kind] = running.get(op.kind, 0) + 1
            continue
        d = operation_duration(op)
        if d is not None:
            durations.setdefault((op.kind, op.state), []).append(d)
        if op.write_pause_s is not None:
            pauses.setdefault((op.kind,), []).append(op.write_pause_s)
    running_fam = GaugeMetricFamily("pgcrdr_operations_running", "Operations running now", labels=["kind"])
    for kind, n in sorted(running.items()):
        running_fam.add_metric([kind], float(n))
    return [
        histogram("pgcrdr_operation_duration_seconds", "How long operations took, from request to end, by kind "
                  "and outcome", ["kind", "state"], DURATION_BUCKETS, durations),
        histogram("pgcrdr_operation_write_pause_seconds", "How long an operation held writes, by kind",
                  ["kind"], PAUSE_BUCKETS, pauses),
        running_fam,
    ]


class StoreCollector(Collector):
    """Reads the store at each scrape (blocking: the route runs in the threadpool)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        yield from service_metrics(self.store.list_services(), now)
        ops = [op for p in self.store.list_projects() for op in self.store.list_operations(p.name)]
        yield from operation_metrics(ops)


def metrics_router(store: Store, auth: Callable[..., Any]) -> APIRouter:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics(_: str = Depends(auth)) -> Response:  # plain def: the store is read off the event loop
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
