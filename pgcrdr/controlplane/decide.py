"""Pure decisions of the reconciler: what a region should run, and what state a service is in.

Nothing here does I/O; the reconciler feeds it snapshots and carries out the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pgcrdr.agentapi.models import (
    BackupPolicy,
    ClusterSpec,
    ClusterStatus,
    DbUser,
    RestoreSource,
    StandbySource,
    TLSMaterial,
)
from pgcrdr.controlplane.catalog import PLANS
from pgcrdr.controlplane.lag import lsn_int
from pgcrdr.controlplane.records import AutomaticFailover, ProjectRecord, ServiceRecord, ServiceState


def backup_policy(plan: str, environ: Mapping[str, str] | None = None) -> BackupPolicy:
    """Backups of a service's writer: retention by plan; intervals from the environment
    (``PGCRDR_BACKUP_FULL_INTERVAL``, ``PGCRDR_BACKUP_INCR_INTERVAL``, ``PGCRDR_ARCHIVE_TIMEOUT``,
    seconds; ``PGCRDR_BACKUPS=off`` disables them)."""
    env = os.environ if environ is None else environ
    return BackupPolicy(
        enabled=env.get("PGCRDR_BACKUPS", "on").lower() not in ("off", "0", "false", "no"),
        full_interval_s=int(env.get("PGCRDR_BACKUP_FULL_INTERVAL", 86400)),
        incr_interval_s=int(env.get("PGCRDR_BACKUP_INCR_INTERVAL", 3600)),
        retention_full=PLANS[plan].backup_max_count,
        archive_timeout_s=int(env.get("PGCRDR_ARCHIVE_TIMEOUT", 60)),
    )


def cluster_spec(svc: ServiceRecord, project: ProjectRecord, standby_of: StandbySource | None = None) -> ClusterSpec:
    """The cluster the region agent must run for this service (``standby_of``: where a passive
    or fenced service replicates from)."""
    params: dict[str, str] = {}
    pg_conf = svc.user_config.get("pg") or {}
    # max_connections is the same on every node (Patroni's DCS, pgcrdr.agent.patroni); only its
    # default is accepted (services.py), so it is never sent as a node parameter.
    if "work_mem" in pg_conf:
        params["work_mem"] = f"{pg_conf['work_mem']}MB"
    return ClusterSpec(
        cluster=svc.cluster,
        node_count=PLANS[svc.plan].node_count,
        powered=svc.powered,
        superuser_password=svc.superuser_password,
        replication_password=svc.replication_password,
        rewind_password=svc.rewind_password,
        users=[DbUser(username=u.username, password=u.password, kind=u.type) for u in svc.users],
        databases=list(svc.databases),
        tls=TLSMaterial(ca_cert_pem=project.ca_cert_pem, cert_pem=svc.tls_cert_pem, key_pem=svc.tls_key_pem),
        pg_parameters=params,
        generation=svc.generation,
        standby_of=standby_of,
        permanent_slots=list(svc.permanent_slots),
        backup=backup_policy(svc.plan),
        restore_from=RestoreSource(stanza=svc.fork.cluster, target_time=svc.fork.target_time) if svc.fork else None,
        # PGCRDR_SYNC_REPLICATION=off forces in-region replication asynchronous (benchmarks)
        sync_replication=os.environ.get("PGCRDR_SYNC_REPLICATION", "on").lower() not in ("off", "0", "false", "no"),
    )


@dataclass(frozen=True)
class Observation:
    """What the reconciler saw of a service's cluster this tick."""

    status: ClusterStatus | None  # None: the agent does not know the cluster (yet)
    agent_error: str | None = None  # the agent could not be reached


@dataclass(frozen=True)
class ServiceView:
    state: ServiceState
    ever_ready: bool
    message: str | None
    reason: str  # one sentence saying why, for logs and tests


def service_view(svc: ServiceRecord, obs: Observation) -> ServiceView:
    """Map the observed cluster onto the Aiven ``state`` of the service."""
    if obs.agent_error:
        # Keep the last known state; say what is wrong.
        return ServiceView(svc.state, svc.ever_ready, obs.agent_error, "region agent unreachable")
    st = obs.status
    if not svc.powered:
        return ServiceView("POWEROFF", False, st.message if st else None, "service is powered off")
    if st is None or st.generation < svc.generation:
        state: ServiceState = "RUNNING" if svc.ever_ready else "REBUILDING"
        return ServiceView(state, svc.ever_ready, svc.message, "waiting for the region to apply the change")
    if st.ready and needs_first_backup(svc, st):
        # As Aiven does (and the Terraform provider waits for): a new writer reports RUNNING once
        # it has a backup in its region's repository.
        msg = st.backup.last_error if st.backup and st.backup.last_error else st.message
        return ServiceView("REBUILDING", False, msg, "waiting for the first backup")
    message = st.message
    if svc.dr_role in (None, "active") and svc.ever_ready and st.nodes and not writer_running(st):
        # A service shown active must take writes; when none of its nodes does, say so.
        why = ("its region runs it as a standby cluster; pgcrdr repairs the pair" if st.standby
               else "waiting for Patroni to elect a leader")
        message = "; ".join(m for m in (f"no node takes writes right now: {why}", message) if m)
    if st.backup is not None and st.backup.message:
        # a repository problem is shown, and blocks nothing that does not need it
        message = "; ".join(m for m in (st.message, f"backups: {st.backup.message}") if m)
    if st.ready:
        return ServiceView("RUNNING", True, message, "cluster ready")
    if svc.ever_ready:
        # Once built, a service stays RUNNING through node losses (HA handles them); the
        # message and node_states tell what is degraded.
        return ServiceView("RUNNING", True, message, "cluster degraded")
    return ServiceView("REBUILDING", False, st.message, f"cluster {st.phase}")


def needs_first_backup(svc: ServiceRecord, st: ClusterStatus) -> bool:
    """A new service that will be a writer (not the passive copy of a pair) and has no backup yet."""
    if svc.ever_ready or svc.dr_role == "passive" or st.standby or not st.backup:
        return False
    policy = backup_policy(svc.plan)
    return policy.enabled and not st.backup.backups


def writer_running(st: ClusterStatus) -> bool:
    """Whether a node of the cluster runs as its writer (Patroni role primary)."""
    return any(n.role == "primary" and n.state == "running" for n in st.nodes)


def pair_without_writer(a: ServiceRecord, b: ServiceRecord, now: float, fresh_s: float = 10.0) -> str | None:
    """Why the pair (a, b) needs a repair, or None. It does when the service recorded active
    was seen recently, in its region, run as a standby cluster with no writer: nobody will make
    it a writer again by itself (unlike a leader election inside the region, which is Patroni's)."""
    active = a if a.dr_role == "active" else b if b.dr_role == "active" else None
    if active is None:
        return None
    other = b if active is a else a
    st = active.status
    if not active.powered or not active.ever_ready or st is None or active.status_time is None:
        return None
    if now - active.status_time > fresh_s or not st.standby or writer_running(st):
        return None
    if st.generation < active.generation:
        # Observed before the region applied the current spec (e.g. just before an operation's
        # records step made this side active): not evidence of anything.
        return None
    if other.status is not None and not other.status.standby and writer_running(other.status):
        return f"{active.name} is recorded active but runs as a standby cluster, while {other.name} takes writes"
    return f"{active.name} is recorded active but its region runs it as a standby cluster"


# A passive side counts as answering when it was observed this recently.
PASSIVE_FRESH_S = 10.0


def automatic_failover_due(cfg: AutomaticFailover | None, active: ServiceRecord, passive: ServiceRecord,
                           now: float) -> tuple[bool, str] | None:
    """Whether the pair fails over by itself now (pure). None: not applicable (disabled, the
    active region answers, or the pair is not in its steady roles); ``(False, why)``: due but
    withheld (the recovery region does not answer, or too much would be given up);
    ``(True, why)``: start, ``why`` goes in the history."""
    if cfg is None or not cfg.enabled or active.dr_role != "active" or passive.dr_role != "passive":
        return None
    if active.dr_kind != "primary":
        return None  # as in Aiven's CRDR, only the primary fails over: after a failover, fail back first
    if active.deleting or passive.deleting or active.state == "POWEROFF":
        return None
    silent = now - active.status_time if active.status_time is not None else None
    if silent is not None and silent < cfg.grace_seconds:
        return None
    since = f"for {silent:.0f} s" if silent is not None else "since the control plane started"
    if passive.status_time is None or now - passive.status_time > PASSIVE_FRESH_S or passive.status is None:
        return False, f"{active.cloud} has not answered {since}, but {passive.cloud} does not answer either"
    written = lsn_int(active.status.lsn.current_lsn) if active.status and active.status.lsn else None
    plsn = passive.status.lsn
    received = lsn_int(plsn.receive_lsn or plsn.replay_lsn) if plsn is not None else None
    if written is None or received is None:
        return False, f"{active.cloud} has not answered {since}; the lag is unknown, so nothing is given up blindly"
    lag = max(0, written - received)
    if lag > cfg.max_data_loss_bytes:
        return False, (f"{active.cloud} has not answered {since}, but its last known lag ({lag} bytes) is above "
                       f"the bound ({cfg.max_data_loss_bytes} bytes): fail over by request to give them up")
    return True, (f"automatic: {active.cloud} has not answered {since} (grace {cfg.grace_seconds:g} s); last known "
                  f"lag {lag} bytes (bound {cfg.max_data_loss_bytes})")
