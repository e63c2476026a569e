"""The region agent's converge loop: observe -> decide (pure, ``decide.py``) -> act.

One worker thread per cluster ticks about once a second, so a slow step of one cluster (a
replica being built, a node shutting down) never stalls another. The API only records intent
(spec.json) and reads the status the last tick computed.

``RegionRuntime`` owns the region's parts, each given what it needs: the cluster registry
(``clusters``), etcd (``region_etcd``), backups, the CRDR primitives (``crdr``) and failback
rebuilds (``rebuild``); the API's calls are delegated to them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgcrdr.agent import etcd as etcd_mod
from pgcrdr.agent import ports as ports_mod
from pgcrdr import processes as proc
from pgcrdr.agent.decide import (
    Action,
    ClusterObs,
    EnsureRoles,
    NodeObs,
    ReloadNode,
    RestartProxy,
    StartNode,
    StartProxy,
    StopNode,
    StopProxy,
    decide,
    summarize,
)
from pgcrdr.agent.backups import Backups
from pgcrdr.agent.clusters import ClusterRegistry, ClusterRuntime, persist_spec
from pgcrdr.agent.crdr import Crdr, load_crdr_results
from pgcrdr.agent.errors import Conflict, NotFound
from pgcrdr.agent.layout import RegionLayout, node_index, node_name
from pgcrdr.agent.rebuild import FORK_REQUEST, Rebuilds, fork_pending, load_rebuild
from pgcrdr.agent.region_etcd import RegionEtcd
from pgcrdr.agentapi.models import (
    BackupStatus,
    BackupType,
    ClusterSpec,
    ClusterStatus,
    DemoteRequest,
    DemoteResult,
    FenceRequest,
    FenceResult,
    KillResult,
    LsnInfo,
    PreserveRequest,
    PreserveState,
    ProgressUnit,
    ProgressUpdate,
    PromoteRequest,
    PromoteResult,
    RebuildRequest,
    RebuildPhase,
    RebuildState,
    RegionHealth,
    RequestState,
    SessionsInfo,
)
from pgcrdr.agent.patroni import (
    PATRONI_LAUNCHER,
    PATRONI_LAUNCHER_NAME,
    get_patroni,
    patroni_argv,
    render_patroni_config,
    render_patroni_yaml,
)
from pgcrdr.agent.postgres import (
    basebackup_progress,
    endpoint_target,
    ensure_users_and_databases,
    last_error_line,
)
from pgcrdr.agent.proxy import ProxyNode, haproxy_argv, render_haproxy_config
from pgcrdr.config import RegionConfig, Settings
from pgcrdr.writer_lease import WriterLease, lease_store

log = logging.getLogger(__name__)

TICK_S = 1.0
# A cluster being created is looked at this often until it is first ready, so that each step of
# its start (Patroni up, the standby leader elected, the endpoint routing) is seen when it
# happens rather than up to a second later (a recovery copy waited ~0.5 s for it, decisions.md).
# Bounded: a cluster that does not become ready within CREATING_FOR_S goes back to TICK_S.
CREATING_TICK_S = 0.2
CREATING_FOR_S = 600.0
NO_LEASE = ("its region does not hold its writer lease: no writer runs here until the lease is held and the "
            "control plane PUTs the spec again")
STOP_TIMEOUT_S = 30.0


class RegionRuntime:
    def __init__(self, settings: Settings, region: RegionConfig):
        self.settings = settings
        self.region = region
        self.layout = RegionLayout(settings.region_dir(region))
        self._stop = threading.Event()
        self._ports_lock = threading.Lock()
        self.clusters = ClusterRegistry()
        self.etcd = RegionEtcd(settings, region, self.layout, self._stop)
        self.backups = Backups(settings, region, self.layout, self.clusters, self._stop)
        self.crdr = Crdr(settings, region, self.clusters, self.etcd)
        self.rebuilds = Rebuilds(settings, region, self.clusters, self.backups)
        self.lease: WriterLease | None = None  # with a global etcd: the region's writer lease

    # --- life cycle --------------------------------------------------------------------------

    def prepare_dirs(self) -> None:
        for d in (self.layout.region_dir, self.layout.run_dir, self.layout.clusters_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        proc.make_node_dir(self.settings, self.layout.etcd_dir, 0o700)

    def start(self) -> None:
        self.prepare_dirs()
        self.etcd.start()
        where = lease_store(self.settings)
        if where is not None:
            self.lease = WriterLease(list(where.endpoints), where.prefix, self.region.cloud_name,
                                     holder=self.settings.agent_url(self.region),
                                     ttl_s=self.settings.writer_lease_ttl_s, tls=where.tls)
            # Before any cluster is resumed: a writer still running from before an agent restart
            # is kept only if the lease is held now.
            if not self.lease.renew_once():
                log.warning("region %s: no writer lease (%s): its writers stay stopped until it is held",
                            self.region.cloud_name, self.lease.state().last_error)
            self.lease.start()
        for spec_file in sorted(self.layout.clusters_dir.glob("*/spec.json")):
            try:
                spec = ClusterSpec.model_validate_json(spec_file.read_text())
            except (OSError, ValueError) as exc:
                log.error("ignoring unreadable %s: %s", spec_file, exc)
                continue
            c = self._register(spec, resumed=True)
            log.info("resumed cluster %s (generation %s)%s", spec.cluster, spec.generation,
                     ": held until the control plane PUTs its spec again" if c.held else "")
        self.etcd.supervise_in_background()

    def shutdown(self) -> None:
        """Stop the loops, then every child: Patroni (which stops PostgreSQL), proxies, etcd."""
        self._stop.set()
        clusters = self.clusters.all()
        for c in clusters:
            if c.thread:
                c.thread.join(timeout=STOP_TIMEOUT_S)
        for c in clusters:  # a backup in progress is abandoned (the next run cleans it up)
            if c.backup_pid and proc.is_running(c.backup_pid):
                proc.signal_pid(c.backup_pid, signal.SIGTERM)
            if c.backup_thread:
                c.backup_thread.join(timeout=STOP_TIMEOUT_S)
        with ThreadPoolExecutor(max_workers=max(1, len(clusters))) as pool:
            list(pool.map(self._stop_cluster_processes, clusters))
        self.etcd.stop()
        if self.lease is not None:
            self.lease.stop()  # given up once its writers are down
        log.info("region %s: every child stopped", self.region.cloud_name)

    def health(self) -> RegionHealth:
        healthy = self.etcd.check_health()
        msg = None
        if not healthy:
            msg = f"etcd is not healthy: {self.etcd.last_error() or 'no log'}"
        return RegionHealth(region=self.region.cloud_name, etcd_healthy=healthy, clusters=len(self.clusters),
                            message=msg)

    # --- API entry points ----------------------------------------------------------------------

    def put_spec(self, spec: ClusterSpec) -> ClusterStatus:
        layout = self.layout.cluster(spec.cluster)
        with self.clusters.lock:
            c = self.clusters.find(spec.cluster)
            if c is not None and c.deleted:
                raise Conflict(f"cluster {spec.cluster} is being deleted; retry once the DELETE has returned")
            if c is not None and c.rebuild_active and spec.powered:
                raise Conflict(f"cluster {spec.cluster} is being rebuilt; power it on once the rebuild is done")
            if c is not None and c.preserve_active and spec.powered:
                raise Conflict(f"the data of cluster {spec.cluster} is being preserved; power it on once the "
                               "preserve is done")
            if c is not None:
                changed = [f for f in ("superuser_password", "replication_password", "rewind_password")
                           if getattr(c.spec, f) != getattr(spec, f)]
                if changed:
                    # Patroni would reload with passwords its roles do not have yet and lose its
                    # own connections; refuse rather than half-apply.
                    raise Conflict(f"{', '.join(changed)} of an existing cluster cannot be changed")
            persist_spec(layout, spec)
            if c is None:
                c = self._register(spec, created=True)
            else:
                c.spec = spec
                no_lease = self._lease_forbids(spec)
                if c.held and not no_lease:
                    log.info("%s: spec PUT again (generation %s): no longer held", spec.cluster, spec.generation)
                c.held, c.held_reason = (True, NO_LEASE) if no_lease else (False, None)
            status = c.status.model_copy(update={"held": c.held}) if c.status is not None else None
        if status is None:
            status = summarize(
                ClusterObs(spec=spec, now=time.monotonic(), nodes=()),
                region=self.region.cloud_name, ports=c.ports, ever_ready=False, host=self.settings.host,
            )
        return status

    def _register(self, spec: ClusterSpec, resumed: bool = False, created: bool = False) -> ClusterRuntime:
        layout = self.layout.cluster(spec.cluster)
        layout.dir.mkdir(parents=True, exist_ok=True)
        with self._ports_lock:
            ports = ports_mod.allocate(self.layout.clusters_dir, spec.cluster, self.region.service_port_range)
        c = ClusterRuntime(spec=spec, layout=layout, ports=ports, created_at=time.monotonic() if created else None)
        self._adopt(c)
        load_crdr_results(c)
        load_rebuild(c)
        # Resumed from disk with none of its Patroni processes alive (the agent and the region
        # were down): the control plane may have fenced it meanwhile, so start nothing yet.
        c.held = resumed and not any(n.pid for n in c.nodes.values())
        if self._lease_forbids(spec):
            c.held, c.held_reason = True, NO_LEASE
        self.clusters.add(c)
        c.thread = threading.Thread(target=self._loop, args=(c,), name=f"cluster-{spec.cluster}", daemon=True)
        c.thread.start()
        self.backups.write_conf()
        self.backups.start_worker(c)
        return c

    def _adopt(self, c: ClusterRuntime) -> None:
        """Take over processes a previous agent left running (after a crash of the agent)."""
        for i, n in c.nodes.items():
            name = node_name(c.spec.cluster, i)
            pid = proc.read_pid(c.layout.patroni_pid(name))
            if proc.pid_matches(pid, str(c.layout.patroni_yml(name))):
                n.pid, n.expected_running = pid, True
        pid = proc.read_pid(c.layout.proxy_pid)
        if proc.pid_matches(pid, str(c.layout.proxy_cfg)):
            c.proxy_pid = pid

    def get_status(self, cluster: str) -> ClusterStatus:
        c = self.clusters.find(cluster)
        if c is None:
            raise NotFound(cluster)
        if c.status is None:
            return summarize(ClusterObs(spec=c.spec, now=time.monotonic(), nodes=(), held=c.held),
                             region=self.region.cloud_name, ports=c.ports, ever_ready=False,
                             host=self.settings.host)
        return c.status

    def list_status(self) -> list[ClusterStatus]:
        out = []
        for name in self.clusters.names():
            try:
                out.append(self.get_status(name))
            except NotFound:
                pass
        return out

    def delete(self, cluster: str) -> list[int]:
        """Stop everything of ``cluster`` (by PID, postmasters included) and remove its files."""
        c = self.clusters.find(cluster)
        if c is None:
            raise NotFound(cluster)
        c.deleted = True
        if c.backup_pid and proc.is_running(c.backup_pid):
            proc.signal_pid(c.backup_pid, signal.SIGTERM)
        with c.act_lock:  # waits for a running tick to finish
            killed = self._kill_cluster_processes(c)
            self.clusters.remove(cluster)
            try:
                etcd_mod.delete_scope(self.region, cluster, self.settings.host)
            except Exception as exc:  # the keys only matter if the name is reused
                log.warning("could not delete etcd keys of %s: %s", cluster, exc)
            for i in (1, 2, 3):
                name = node_name(cluster, i)
                c.layout.patroni_pid(name).unlink(missing_ok=True)
                if not c.layout.socket_dir(name).is_relative_to(c.layout.dir):
                    shutil.rmtree(c.layout.socket_dir(name), ignore_errors=True)
            c.layout.proxy_pid.unlink(missing_ok=True)
            if not c.layout.proxy_socket.is_relative_to(c.layout.dir):
                shutil.rmtree(c.layout.proxy_socket.parent, ignore_errors=True)
            shutil.rmtree(c.layout.dir, ignore_errors=True)
            self.backups.delete_stanza(cluster)
        log.info("deleted cluster %s (killed %s)", cluster, killed)
        return killed

    def kill_node(self, cluster: str, node: str, restart_after: float) -> KillResult:
        c = self.clusters.find(cluster)
        if c is None:
            raise NotFound(cluster)
        idx = node_index(cluster, node)
        if idx is None or idx > c.spec.node_count:
            raise NotFound(f"{cluster}/{node}")
        n = c.nodes[idx]
        # Hold first so the loop does not restart it between the two kills.
        n.held_until = time.monotonic() + restart_after
        killed: list[int] = []
        pid = n.pid if proc.is_running(n.pid) else None
        if pid:
            proc.signal_pid(pid, signal.SIGKILL)
            killed.append(pid)
        pm = proc.postmaster_pid(c.layout.data_dir(node))
        if pm:
            proc.kill_postmaster_tree(pm)
            killed.append(pm)
        n.expected_running = False
        proc.wait_gone(killed, 5)
        log.info("kill drill on %s: killed %s; no restart for %.0f s", node, killed, restart_after)
        return KillResult(node=node, killed_pids=killed)

    # --- delegated to the parts ------------------------------------------------------------------

    def lsn(self, cluster: str, at_least: str | None = None, wait: float = 0.0) -> LsnInfo:
        return self.crdr.lsn(cluster, at_least, wait)

    def sessions(self, cluster: str) -> SessionsInfo:
        return self.crdr.sessions(cluster)

    def checkpoint(self, cluster: str) -> LsnInfo:
        return self.crdr.checkpoint(cluster)

    def demote(self, cluster: str, req: DemoteRequest) -> DemoteResult:
        return self.crdr.demote(cluster, req)

    def promote(self, cluster: str, req: PromoteRequest) -> PromoteResult:
        return self.crdr.promote(cluster, req)

    def cancel_request(self, cluster: str, request_id: str) -> RequestState:
        return self.crdr.cancel_request(cluster, request_id)

    def fence(self, cluster: str, req: FenceRequest) -> FenceResult:
        return self.crdr.fence(cluster, req)

    def preserve(self, cluster: str, req: PreserveRequest) -> PreserveState:
        return self.crdr.preserve(cluster, req)

    def get_preserve(self, cluster: str) -> PreserveState | None:
        return self.crdr.get_preserve(cluster)

    def region_outage(self) -> None:
        self.crdr.region_outage()

    def rebuild(self, cluster: str, req: RebuildRequest) -> RebuildState:
        return self.rebuilds.start(cluster, req)

    def get_rebuild(self, cluster: str) -> RebuildState | None:
        return self.rebuilds.get(cluster)

    def backup_status(self, cluster: str) -> BackupStatus:
        return self.backups.status(cluster)

    def request_backup(self, cluster: str, kind: BackupType = "full") -> BackupStatus:
        return self.backups.request_backup(cluster, kind)

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self, c: ClusterRuntime) -> None:
        while not self._stop.is_set() and not c.deleted:
            started = time.monotonic()
            try:
                with c.act_lock:
                    if c.deleted or self._stop.is_set():
                        return
                    self._tick(c)
            except Exception as exc:
                log.exception("tick of %s failed", c.spec.cluster)
                c.action_error = f"agent error: {exc}"
            self._stop.wait(max(0.1, self._tick_interval(c) - (time.monotonic() - started)))

    @staticmethod
    def _tick_interval(c: ClusterRuntime, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        creating = (c.created_at is not None and now - c.created_at < CREATING_FOR_S and not c.ever_ready
                    and c.spec.powered and not c.held and not c.copying)
        return CREATING_TICK_S if creating else TICK_S

    # --- the writer lease (pgcrdr.writer_lease) ----------------------------------------------

    def _lease_forbids(self, spec: ClusterSpec) -> bool:
        """A writer may not run here now: the deployment has writer leases and this region's is
        not held."""
        return (self.lease is not None and spec.powered and spec.standby_of is None
                and not self.lease.allowed())

    def _fence_without_lease(self, c: ClusterRuntime) -> None:
        """The lease was not renewed in time: stop the writer at once (every process of the
        cluster is killed: connections are refused; what was flushed stays on disk) and hold it
        until the control plane PUTs its spec again, since another region may have been promoted."""
        if c.held and c.held_reason:
            return
        killed = self._kill_cluster_processes(c)
        c.held, c.held_reason = True, (f"its region's writer lease was not renewed in time "
                                       f"({self.lease.state().last_error if self.lease else '?'}); the writer "
                                       "was stopped so that it takes no writes while another region may be "
                                       "promoted, and nothing starts until the control plane PUTs its spec again")
        log.warning("%s: writer lease lost: writer stopped (killed pids %s)", c.spec.cluster, killed)

    def _tick(self, c: ClusterRuntime) -> None:
        spec = c.spec
        if self._lease_forbids(spec):
            self._fence_without_lease(c)
        self._write_tls(c)
        if not c.held and self.etcd.healthy:
            self.crdr.sync_dcs(c)
        if not c.held and spec.powered:
            self.rebuilds.ensure_fork(c)
        obs = self._observe(c)
        # pg_basebackup running (Patroni "creating replica"): nothing to react to until it ends,
        # and a faster tick would only take CPU from the copy
        c.copying = any(n.rest is not None and n.rest.get("state") == "creating replica" for n in obs.nodes)
        decision = decide(obs)
        if decision.reason != c.last_reason:
            log.info("%s: %s", spec.cluster, decision.reason)
            c.last_reason = decision.reason
        c.action_error = None
        for action in decision.actions:
            try:
                self._act(c, action)
            except Exception as exc:
                log.exception("%s: %s failed", spec.cluster, action)
                c.action_error = f"{type(action).__name__} failed: {exc}"
        if decision.actions:
            obs = self._observe(c)
        status = summarize(obs, region=self.region.cloud_name, ports=c.ports, ever_ready=c.ever_ready,
                           host=self.settings.host)
        was_ready = c.status is not None and c.status.ready
        if status.ready != was_ready:  # one line per change: when a cluster became usable (bench/setup.py reads it)
            log.info("%s: %s", spec.cluster, "ready" if status.ready else "not ready")
        if status.ready:
            c.ever_ready = True
        if not spec.powered:
            c.ever_ready = False
        c.status = self._with_backup_and_rebuild(c, status)

    def _with_backup_and_rebuild(self, c: ClusterRuntime, status: ClusterStatus) -> ClusterStatus:
        """The status plus the cluster's backups and, while a rebuild runs, its progress on the
        node being rebuilt (phases prepare, basebackup, stream, finalize)."""
        update: dict[str, Any] = {"backup": c.backup_status, "rebuild": c.rebuild}
        run = c.backup_status.running if c.backup_status else None
        if run is not None and status.lsn is not None:
            # the writer being backed up shows it, with bytes, like Aiven's node progress
            backup = ProgressUpdate(phase="basebackup", min=0, max=run.size, current=run.done)
            update["nodes"] = [n.model_copy(update={"progress": [*n.progress, backup]}) if n.name == status.lsn.node
                               else n for n in status.nodes]
        rb = c.rebuild
        if rb is not None and rb.request_id == FORK_REQUEST and rb.state == "failed" and fork_pending(c):
            update["message"] = rb.message
        if rb is not None and rb.state == "running":
            phases: list[RebuildPhase] = ["prepare", "basebackup", "stream", "finalize"]
            at = phases.index(rb.phase)
            progress = [ProgressUpdate(phase=p, completed=True) for p in phases[:at]]
            unit: ProgressUnit = "bytes_uncompressed" if rb.phase == "basebackup" else "prepare_percent"
            progress.append(ProgressUpdate(phase=rb.phase, min=0, max=rb.progress_max, current=rb.progress_current,
                                           unit=unit))
            update["nodes"] = [n.model_copy(update={"progress": progress, "state": "starting"}) if n.name == rb.node
                               else n for n in status.nodes]
        return status.model_copy(update=update)

    def _patroni_yaml(self, c: ClusterRuntime, index: int) -> str:
        name = node_name(c.spec.cluster, index)
        cfg = render_patroni_config(
            c.spec, name, pg_port=c.ports.pg(index), rest_port=c.ports.rest(index),
            etcd_port=self.region.etcd_client_port, paths=c.node_paths(name),
            pg_bin_dir=self.settings.pg_bin_dir, host=self.settings.host,
            archive_command=(self.backups.archive_command_for(c.spec.cluster, c.layout.data_dir(name))
                             if c.spec.backup.enabled else None),
        )
        return render_patroni_yaml(cfg)

    def _proxy_cfg(self, c: ClusterRuntime) -> str:
        nodes = [
            ProxyNode(node_name(c.spec.cluster, i), c.ports.pg(i), c.ports.rest(i))
            for i in range(1, c.spec.node_count + 1)
        ]
        return render_haproxy_config(c.spec.cluster, c.ports.primary, c.ports.replica, nodes, self.settings.host,
                                     runtime_socket=c.layout.proxy_socket)

    def _observe(self, c: ClusterRuntime) -> ClusterObs:
        now = time.monotonic()
        nodes: list[NodeObs] = []
        for i in (1, 2, 3):
            name = node_name(c.spec.cluster, i)
            nr = c.nodes[i]
            node_dir = c.layout.node_dir(name)
            if i > c.spec.node_count and not node_dir.exists() and not nr.pid:
                continue
            running = proc.is_running(nr.pid)
            if nr.expected_running and not running:
                nr.failures += 1
                nr.expected_running = False
                log.warning("%s: Patroni (pid %s) exited unexpectedly (%s in a row)", name, nr.pid, nr.failures)
            if not running:
                nr.pid = None
            creating = c.created_at is not None and not c.ever_ready
            rest = get_patroni(c.ports.rest(i), self.settings.host, prompt=creating) if running else None
            if rest and rest.get("state") == "running":
                nr.failures = 0
            yml = c.layout.patroni_yml(name)
            try:
                changed = yml.read_text() != self._patroni_yaml(c, i)
            except OSError:
                changed = True
            failing = nr.failures > 0 or (rest is not None and rest.get("state") in ("start failed", "crashed"))
            nodes.append(NodeObs(
                index=i, name=name, patroni_running=running,
                postmaster_running=proc.postmaster_pid(c.layout.data_dir(name)) is not None,
                has_data=(c.layout.data_dir(name) / "PG_VERSION").exists(),
                rest=rest, held_until=nr.held_until, failures=nr.failures, last_start=nr.last_start,
                config_changed=changed,
                last_error=last_error_line([c.layout.pg_log_dir(name) / "postgresql.log",
                                            c.layout.patroni_log(name)]) if failing else None,
            ))
        proxy_running = proc.is_running(c.proxy_pid)
        try:
            proxy_changed = c.layout.proxy_cfg.read_text() != self._proxy_cfg(c)
        except OSError:
            proxy_changed = True
        obs = ClusterObs(
            spec=c.spec, now=now, nodes=tuple(nodes), etcd_healthy=self.etcd.healthy,
            proxy_running=proxy_running, proxy_config_changed=proxy_changed, ensured=c.ensured,
            ensure_error=c.ensure_error, action_error=c.action_error,
            held=c.held, held_reason=c.held_reason, dcs_synced=c.dcs_synced, dcs_error=c.dcs_error,
            restoring=fork_pending(c),
        )
        leader = obs.leader
        verified_leader = None
        if leader is None or not proxy_running:
            c.endpoint_verified = None
        else:
            # HAProxy marks servers up or down only after its checks: prove that each endpoint
            # reaches the right server before calling the cluster ready.
            key = (leader.name, tuple(n.name for n in obs.wanted
                                      if n.index != leader.index and n.rest_state == "running"
                                      and n.rest and n.rest.get("replication_state") == "streaming"))
            roles_done = c.spec.standby_of is not None or obs.ensured == (c.spec.generation, leader.name)
            if c.endpoint_verified != key and roles_done:
                try:
                    if self._endpoints_route(c, leader.index, bool(key[1])):
                        c.endpoint_verified = key
                except Exception as exc:
                    log.debug("endpoints of %s not routing yet: %s", c.spec.cluster, exc)
            if c.endpoint_verified == key:
                verified_leader = leader.name
        obs = dataclasses.replace(obs, endpoint_verified=verified_leader)
        building = [n for n in obs.wanted if leader and n.index != leader.index and n.rest_state != "running"]
        if leader and building and c.spec.powered:
            try:
                bb = tuple(basebackup_progress(c.spec, c.ports.pg(leader.index), self.settings.host))
                obs = dataclasses.replace(obs, basebackups=bb)
            except Exception as exc:  # progress is best effort
                log.debug("basebackup progress of %s unavailable: %s", c.spec.cluster, exc)
        return obs

    def _endpoints_route(self, c: ClusterRuntime, leader_index: int, has_replicas: bool) -> bool:
        """The primary endpoint reaches the writer; the replica endpoint reaches a standby (or
        the writer when there is none)."""
        host = self.settings.host
        if c.spec.standby_of is not None:
            # A standby cluster has no writer: its primary endpoint routes nowhere on purpose;
            # its replica endpoint reaches the standby leader or a replica.
            port, in_recovery = endpoint_target(c.spec, c.ports.replica, host)
            return in_recovery
        port, in_recovery = endpoint_target(c.spec, c.ports.primary, host)
        if port != c.ports.pg(leader_index) or in_recovery:
            return False
        port, in_recovery = endpoint_target(c.spec, c.ports.replica, host)
        return in_recovery if has_replicas else port == c.ports.pg(leader_index)

    # --- actions -------------------------------------------------------------------------------

    def _write_tls(self, c: ClusterRuntime) -> None:
        s, lay, tls = self.settings, c.layout, c.spec.tls
        proc.make_node_dir(s, lay.tls_dir, 0o700)
        changed = proc.write_node_file(s, lay.ca_file, tls.ca_cert_pem, 0o644)
        changed |= proc.write_node_file(s, lay.cert_file, tls.cert_pem, 0o644)
        changed |= proc.write_node_file(s, lay.key_file, tls.key_pem, 0o600)
        if changed:
            # PostgreSQL re-reads its certificate files on SIGHUP (new connections use them).
            for i in (1, 2, 3):
                pm = proc.postmaster_pid(lay.data_dir(node_name(c.spec.cluster, i)))
                if pm:
                    proc.signal_pid(pm, signal.SIGHUP)
                    log.info("%s: TLS material changed; reloaded postmaster %s", c.spec.cluster, pm)

    def _act(self, c: ClusterRuntime, action: Action) -> None:
        if isinstance(action, StartNode):
            self._start_node(c, action.index)
        elif isinstance(action, ReloadNode):
            name = node_name(c.spec.cluster, action.index)
            proc.write_node_file(self.settings, c.layout.patroni_yml(name), self._patroni_yaml(c, action.index))
            pid = c.nodes[action.index].pid
            if pid:
                proc.signal_pid(pid, signal.SIGHUP)
        elif isinstance(action, StopNode):
            self._stop_node(c, action.index, remove_data=action.remove_data)
        elif isinstance(action, StartProxy):
            self._start_proxy(c)
        elif isinstance(action, RestartProxy):
            self._stop_proxy(c)
            self._start_proxy(c)
        elif isinstance(action, StopProxy):
            self._stop_proxy(c)
        elif isinstance(action, EnsureRoles):
            try:
                # The spec may be replaced by a PUT while this runs: only the generation that was
                # actually applied counts as ensured.
                spec = c.spec
                done = ensure_users_and_databases(spec, c.ports.pg(action.index), self.settings.host)
                c.ensured, c.ensure_error = (spec.generation, action.leader), None
                log.info("%s: users and databases ensured on %s (generation %s): %s", spec.cluster,
                         action.leader, spec.generation, "; ".join(done) or "no change")
            except Exception as exc:
                c.ensure_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                log.warning("%s: ensuring users failed: %s", c.spec.cluster, exc)

    def _start_node(self, c: ClusterRuntime, index: int) -> None:
        s, lay = self.settings, c.layout
        name = node_name(c.spec.cluster, index)
        if c.held or not c.spec.powered or not c.dcs_synced or c.rebuild_active or c.preserve_active:
            # the spec changed (fence, outage hold) since this tick decided: start nothing
            log.info("%s: not started (held, powered off, DCS not in line with the spec, or its data is being "
                     "rebuilt or preserved)", name)
            return
        (lay.dir / "nodes").mkdir(parents=True, exist_ok=True)
        (lay.dir / "nodes").chmod(0o755)
        node_dir = proc.make_node_dir(s, lay.node_dir(name), 0o700)
        proc.make_node_dir(s, lay.pg_log_dir(name), 0o700)
        proc.make_node_dir(s, lay.socket_dir(name), 0o700)
        if lay.data_dir(name).exists():
            proc.chown_for_node(s, lay.data_dir(name), 0o700)
        proc.write_node_file(s, lay.patroni_yml(name), self._patroni_yaml(c, index))
        proc.write_node_file(s, lay.patroni_yml(name).parent / PATRONI_LAUNCHER_NAME, PATRONI_LAUNCHER)
        popen = proc.spawn(s, patroni_argv(s.node_venv, lay.patroni_yml(name)),
                           pid_file=lay.patroni_pid(name), log_file=lay.patroni_log(name), cwd=node_dir)
        nr = c.nodes[index]
        nr.pid, nr.popen, nr.expected_running, nr.last_start = popen.pid, popen, True, time.monotonic()
        nr.held_until = None

    def _stop_node(self, c: ClusterRuntime, index: int, remove_data: bool = False) -> list[int]:
        name = node_name(c.spec.cluster, index)
        nr = c.nodes[index]
        nr.expected_running = False
        pids: list[int] = []
        if nr.pid and proc.is_running(nr.pid):
            # Patroni's SIGTERM handler shuts PostgreSQL down (fast) and releases the leader key.
            proc.signal_pid(nr.pid, signal.SIGTERM)
            pids.append(nr.pid)
            if proc.wait_gone([nr.pid], STOP_TIMEOUT_S):
                log.warning("%s: Patroni ignored SIGTERM; SIGKILL", name)
                proc.signal_pid(nr.pid, signal.SIGKILL)
                proc.wait_gone([nr.pid], 5)
        # Whatever Patroni left behind (or a postmaster whose Patroni was killed).
        pids += proc.stop_postmaster(c.layout.data_dir(name), timeout=STOP_TIMEOUT_S)
        nr.pid, nr.popen = None, None
        c.layout.patroni_pid(name).unlink(missing_ok=True)
        if remove_data:
            shutil.rmtree(c.layout.node_dir(name), ignore_errors=True)
            if not c.layout.socket_dir(name).is_relative_to(c.layout.dir):
                shutil.rmtree(c.layout.socket_dir(name), ignore_errors=True)
            nr.failures, nr.held_until = 0, None
        if pids or remove_data:
            log.info("%s: stopped (pids %s)%s", name, pids, ", data removed" if remove_data else "")
        return pids

    def _start_proxy(self, c: ClusterRuntime) -> None:
        s, lay = self.settings, c.layout
        proc.write_node_file(s, lay.proxy_cfg, self._proxy_cfg(c), 0o600)
        proc.make_node_dir(s, lay.proxy_socket.parent, 0o700)
        popen = proc.spawn(s, haproxy_argv(str(lay.proxy_cfg)), pid_file=lay.proxy_pid, log_file=lay.proxy_log,
                           cwd=lay.dir)
        c.proxy_pid = popen.pid
        time.sleep(0.2)
        if not proc.is_running(popen.pid):
            raise RuntimeError(f"HAProxy exited at once: {last_error_line([lay.proxy_log])}")

    def _stop_proxy(self, c: ClusterRuntime) -> None:
        pid = c.proxy_pid
        if pid and proc.is_running(pid):
            proc.signal_pid(pid, signal.SIGTERM)
            if proc.wait_gone([pid], 5):
                proc.signal_pid(pid, signal.SIGKILL)
                proc.wait_gone([pid], 5)
        c.proxy_pid = None
        c.endpoint_verified = None
        c.layout.proxy_pid.unlink(missing_ok=True)

    def _stop_cluster_processes(self, c: ClusterRuntime) -> None:
        """Clean stop of a cluster at agent shutdown: standbys first, the leader last."""
        with c.act_lock:
            order = sorted((1, 2, 3), key=lambda i: (self._is_leader(c, i), i))
            for i in order:
                try:
                    self._stop_node(c, i)
                except Exception:
                    log.exception("stopping node %s of %s failed", i, c.spec.cluster)
            self._stop_proxy(c)

    def _is_leader(self, c: ClusterRuntime, index: int) -> bool:
        if not proc.is_running(c.nodes[index].pid):
            return False
        rest = get_patroni(c.ports.rest(index), self.settings.host)
        return bool(rest and rest.get("role") in ("primary", "master", "standby_leader"))

    def _kill_cluster_processes(self, c: ClusterRuntime) -> list[int]:
        """SIGKILL every process of a cluster being deleted (its data goes too)."""
        killed: list[int] = []
        for i in (1, 2, 3):
            name = node_name(c.spec.cluster, i)
            pid = c.nodes[i].pid or proc.read_pid(c.layout.patroni_pid(name))
            if proc.pid_matches(pid, str(c.layout.patroni_yml(name))):
                proc.signal_pid(pid, signal.SIGKILL)
                killed.append(pid)
            pm = proc.postmaster_pid(c.layout.data_dir(name))
            if pm:
                proc.kill_postmaster_tree(pm)
                killed.append(pm)
            c.nodes[i].pid = None
            c.nodes[i].expected_running = False
        if c.proxy_pid and proc.is_running(c.proxy_pid):
            proc.signal_pid(c.proxy_pid, signal.SIGKILL)
            killed.append(c.proxy_pid)
        left = proc.wait_gone(killed, 10)
        if left:
            log.error("%s: pids %s survived SIGKILL", c.spec.cluster, left)
        # Backends of a killed postmaster exit on their own; make sure before removing files.
        stragglers = proc.processes_under(c.layout.dir)
        for p in stragglers:
            proc.signal_pid(p, signal.SIGKILL)
        proc.wait_gone(stragglers, 5)
        return killed + stragglers
