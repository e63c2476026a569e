"""CRDR primitives of the region agent: keep the DCS in line with the spec, read WAL positions,
demote a writer into a standby cluster, promote a standby cluster, fence, preserve an old writer's
data, and the region outage drill (architecture.md, "The safe sequences").

Each primitive is idempotent and persists what it changes in the cluster's spec.json *before*
acting, so an agent killed half-way comes back with the intent the control plane asked for
(a demoted cluster never comes back as a writer). ``RegionRuntime`` owns a ``Crdr`` and
delegates to it; these take each cluster's ``act_lock`` so the converge loop never acts on a
half-changed cluster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import psycopg
from pydantic import BaseModel

from pgcrdr.agent import dcs
from pgcrdr import processes as proc
from pgcrdr.agent.processes import kill_region_now
from pgcrdr.agent.backups import now_iso
from pgcrdr.agent.clusters import ClusterRegistry, ClusterRuntime, persist_spec
from pgcrdr.agent.errors import Conflict, Timeout
from pgcrdr.agent.layout import node_name
from pgcrdr.agentapi.models import (
    DemoteRequest,
    DemoteResult,
    FenceRequest,
    FenceResult,
    LsnInfo,
    PreserveRequest,
    PreserveResult,
    PreserveState,
    PromoteRequest,
    PromoteResult,
    RequestState,
    SessionsInfo,
)
from pgcrdr.agent.patroni import get_patroni, render_patroni_config
from pgcrdr.agent.proxy import server_running
from pgcrdr.agent.postgres import connect_superuser, lsn_info, one_value, timeline_switch_point
from pgcrdr.agent.region_etcd import RegionEtcd
from pgcrdr.agent.sessions import read_sessions
from pgcrdr.agent.wal import (
    DB_SHUTDOWNED,
    ControlData,
    commits_after,
    controldata_or_none,
    disk_position,
    max_lsn,
    most_advanced,
    raw_cluster_state,
)
from pgcrdr.agentapi.lsn import parse_lsn
from pgcrdr.config import RegionConfig, Settings
from pgcrdr.haproxy import haproxy_command

log = logging.getLogger(__name__)

POLL_DOWN_S = 0.005  # demote: how often to look for the old writer's postmaster.pid
POLL_LSN_S = 0.002  # lsn(at_least): how often to read the position (a local query, ~0.3 ms)
POLL_PROMOTE_S = 0.005  # promote: how often to ask pg_is_in_recovery() (PostgreSQL promotes in ~30 ms)
LOCK_WAIT_S = 10.0
POLL_ROUTED_S = 0.01  # promote: how often to try the writer endpoint until it reaches the new writer
ROUTE_WAIT_S = 2.0  # promote: at most this long (HAProxy rechecks a down server every 100 ms)


def save_result(c: ClusterRuntime, kind: str, result: BaseModel) -> None:
    path = c.layout.dir / f"{kind}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(result.model_dump_json())
    tmp.replace(path)


def load_crdr_results(c: ClusterRuntime) -> None:
    """The last demote and promote results and preserve job of a cluster the agent resumes."""
    for kind, model in (("demote", DemoteResult), ("promote", PromoteResult)):
        try:
            setattr(c, f"last_{kind}", model.model_validate_json((c.layout.dir / f"{kind}.json").read_text()))
        except (OSError, ValueError):
            pass
    try:
        job = PreserveState.model_validate_json((c.layout.dir / "preserve-job.json").read_text())
    except (OSError, ValueError):
        return
    if job.state == "running":  # the agent died during the copy
        job = job.model_copy(update={"state": "failed", "finished": now_iso(),
                                     "message": "interrupted by an agent restart; request the preserve again"})
        save_result(c, "preserve-job", job)
    c.preserve = job


class Crdr:
    """The CRDR primitives of one region's clusters (found in ``clusters``); ``etcd`` says
    whether the DCS can be written straight when no Patroni runs."""

    def __init__(self, settings: Settings, region: RegionConfig, clusters: ClusterRegistry, etcd: RegionEtcd):
        self.settings = settings
        self.region = region
        self.clusters = clusters
        self.etcd = etcd

    # --- DCS in line with the spec -----------------------------------------------------------

    def _running_rest_ports(self, c: ClusterRuntime) -> list[int]:
        return [c.ports.rest(i) for i in (1, 2, 3) if proc.is_running(c.nodes[i].pid)]

    def _apply_dcs(self, c: ClusterRuntime, patch: dict[str, Any], current: dict[str, Any],
                   prefer_rest: int | None = None) -> str:
        """Apply ``patch``: PATCH /config on a running node (wakes its HA loop), else straight into
        etcd. Returns how it was done."""
        ports = self._running_rest_ports(c)
        if prefer_rest is not None:
            ports = [prefer_rest] + [p for p in ports if p != prefer_rest]
        for port in ports:
            try:
                dcs.patch_via_rest(port, patch, self.settings.host)
                return f"PATCH /config on port {port}"
            except Exception as exc:
                log.info("%s: PATCH /config on %s failed (%s); trying the next way", c.spec.cluster, port, exc)
        dcs.write_config(self.region, c.spec.cluster, dcs.apply_patch(current, patch), self.settings.host)
        return "written to etcd"

    def sync_dcs(self, c: ClusterRuntime) -> None:
        """Make the DCS config say what the spec says (standby_cluster, slots). Called by each tick
        before deciding; a cluster whose DCS is not in line is not started (decide)."""
        spec = c.spec
        try:
            current, initialized = dcs.read_config(self.region, spec.cluster, self.settings.host)
            if current is None:
                if initialized and not self._running_rest_ports(c):
                    # The scope exists but lost its config: write the whole dynamic config, else
                    # Patroni would fall back on the copy cached in its data directory.
                    full = render_patroni_config(
                        spec, node_name(spec.cluster, 1), pg_port=c.ports.pg(1), rest_port=c.ports.rest(1),
                        etcd_port=self.region.etcd_client_port,
                        paths=c.node_paths(node_name(spec.cluster, 1)),
                        pg_bin_dir=self.settings.pg_bin_dir, host=self.settings.host,
                    )["bootstrap"]["dcs"]
                    dcs.write_config(self.region, spec.cluster, full, self.settings.host)
                    log.info("%s: DCS config was missing; wrote it from the spec", spec.cluster)
                # else: a new scope (or one bootstrapping now): bootstrap.dcs, rendered from the
                # spec, applies
            else:
                patch = dcs.dcs_patch(spec, current)
                if patch:
                    how = self._apply_dcs(c, patch, current)
                    log.info("%s: DCS config brought in line with the spec (%s): %s", spec.cluster, how,
                             json.dumps(patch))
            c.dcs_synced, c.dcs_error = True, None
        except Exception as exc:
            c.dcs_synced, c.dcs_error = False, str(exc).splitlines()[0] if str(exc) else repr(exc)
            log.warning("%s: DCS sync failed: %s", spec.cluster, exc)

    # --- observation helpers -------------------------------------------------------------------

    def _roles(self, c: ClusterRuntime) -> dict[int, str]:
        """{node index: Patroni role} of the nodes whose Patroni runs and answers as running."""
        out = {}
        for i in range(1, c.spec.node_count + 1):
            if not proc.is_running(c.nodes[i].pid):
                continue
            rest = get_patroni(c.ports.rest(i), self.settings.host)
            if rest and rest.get("state") == "running":
                out[i] = str(rest.get("role"))
        return out

    def _leader_index(self, c: ClusterRuntime) -> int | None:
        roles = self._roles(c)
        for i, role in sorted(roles.items()):
            if role in ("primary", "master", "standby_leader"):
                return i
        return None

    def _lock_cluster(self, c: ClusterRuntime, timeout: float) -> None:
        if not c.act_lock.acquire(timeout=timeout):
            raise Timeout(f"cluster {c.spec.cluster} is busy (another operation or a slow converge step); "
                               f"gave up after {timeout:.0f} s")

    def _disk_lsn(self, data_dir: Path) -> tuple[ControlData | None, str | None]:
        return disk_position(self.settings.pg_bin_dir, data_dir)

    # --- LSN, checkpoint ---------------------------------------------------------------------

    def _connect_node(self, c: ClusterRuntime, idx: int, connect_timeout: int = 3) -> psycopg.Connection:
        """A superuser connection to node ``idx`` over its Unix socket (it runs on this host)."""
        return connect_superuser(c.spec, c.ports.pg(idx), self.settings.host, connect_timeout=connect_timeout,
                                 socket_dir=c.layout.socket_dir(node_name(c.spec.cluster, idx)))

    def _on_leader(self, cluster: str, what: str, read: Any) -> Any:
        """``read(conn, node)`` on the cluster's leader (writer or standby leader); 409 when none answers."""
        c = self.clusters.get(cluster)
        idx = self._leader_index(c)
        if idx is None:
            raise Conflict(f"cluster {cluster} has no leader answering (phase "
                               f"{c.status.phase if c.status else 'unknown'}); {what}")
        with self._connect_node(c, idx) as conn:
            return read(conn, node_name(cluster, idx))

    def lsn(self, cluster: str, at_least: str | None = None, wait: float = 0.0) -> LsnInfo:
        """The leader's positions. With ``at_least``: read every few ms on one local connection
        until the leader has received (a standby) or written (a writer) that far, at most
        ``wait`` seconds; the last reading either way (the caller compares)."""
        if at_least is None or wait <= 0:
            return self._on_leader(cluster, "nothing to read the LSN from", lsn_info)
        want = parse_lsn(at_least)
        deadline = time.monotonic() + wait

        def reached(conn: psycopg.Connection, node: str) -> LsnInfo:
            while True:
                info = lsn_info(conn, node)
                pos = info.receive_lsn if info.in_recovery else info.current_lsn
                if (pos is not None and parse_lsn(pos) >= want) or time.monotonic() >= deadline:
                    return info
                time.sleep(POLL_LSN_S)

        return self._on_leader(cluster, "nothing to read the LSN from", reached)

    def sessions(self, cluster: str) -> SessionsInfo:
        """Client sessions of the leader that are active or hold a transaction open."""
        return self._on_leader(cluster, "no sessions to read", read_sessions)

    def checkpoint(self, cluster: str) -> LsnInfo:
        c = self.clusters.get(cluster)
        idx = self._leader_index(c)
        if idx is None:
            raise Conflict(f"cluster {cluster} has no leader answering; cannot CHECKPOINT")
        with self._connect_node(c, idx) as conn:
            conn.execute("CHECKPOINT")  # a restartpoint on a standby leader: harmless
            return lsn_info(conn, node_name(cluster, idx))

    # --- request ids ---------------------------------------------------------------------------

    @contextmanager
    def _tracked(self, c: ClusterRuntime, request_id: str | None) -> Iterator[None]:
        """Record what becomes of a request id. A cancelled id is refused (409) and changes
        nothing: the control plane cancels an id whose answer it lost before it undoes a move,
        so a late delivery (an agent frozen with the request in its socket) cannot act after
        the undo."""
        if request_id is None:
            yield
            return
        with self.clusters.lock:
            cur = c.requests.get(request_id)
            if cur is not None and cur.state == "cancelled":
                raise Conflict(f"request {request_id} was cancelled by the control plane; nothing was done")
            c.requests[request_id] = RequestState(request_id=request_id, state="running")
            if len(c.requests) > 200:  # keep the newest; ids are per operation step
                for k in list(c.requests)[:-200]:
                    c.requests.pop(k, None)
        try:
            yield
        except BaseException as exc:
            state: Literal["refused", "failed"] = "refused" if isinstance(exc, Conflict) else "failed"
            with self.clusters.lock:
                c.requests[request_id] = RequestState(request_id=request_id, state=state, message=str(exc)[:300])
            raise
        with self.clusters.lock:
            c.requests[request_id] = RequestState(request_id=request_id, state="done")

    def cancel_request(self, cluster: str, request_id: str) -> RequestState:
        """Cancel ``request_id`` unless it already ran (or runs): its state afterwards."""
        c = self.clusters.get(cluster)
        with self.clusters.lock:
            cur = c.requests.get(request_id)
            if cur is None or cur.state in ("queued", "cancelled"):
                cur = c.requests[request_id] = RequestState(request_id=request_id, state="cancelled")
            return cur

    def _check_cancelled(self, c: ClusterRuntime, request_id: str | None) -> None:
        if request_id is None:
            return
        with self.clusters.lock:
            cur = c.requests.get(request_id)
        if cur is not None and cur.state == "cancelled":
            raise Conflict(f"request {request_id} was cancelled by the control plane; nothing was done")

    # --- demote --------------------------------------------------------------------------------

    def demote(self, cluster: str, req: DemoteRequest) -> DemoteResult:
        """Make the cluster a standby cluster of ``req.standby_of``; return once its writer can
        write no more: its shutdown checkpoint is in pg_control (or its postmaster is gone), not
        when Patroni has restarted it as a standby, ~2 s later."""
        return self._locked_request(cluster, req, self._demote)

    def _locked_request(self, cluster: str, req: Any, fn: Any) -> Any:
        """``fn(c, req, t0)`` under the cluster's act_lock, with ``req.request_id`` tracked (a
        cancelled id is refused before anything is done)."""
        c = self.clusters.get(cluster)
        self._check_cancelled(c, req.request_id)
        t0 = time.monotonic()
        self._lock_cluster(c, min(LOCK_WAIT_S, req.timeout))
        try:
            with self._tracked(c, req.request_id):
                return fn(c, req, t0)
        finally:
            c.act_lock.release()

    def _demote(self, c: ClusterRuntime, req: DemoteRequest, t0: float) -> DemoteResult:
        cluster = c.spec.cluster
        deadline = t0 + req.timeout
        steps = {"locked": time.monotonic() - t0}
        roles = self._roles(c)
        steps["roles"] = time.monotonic() - t0
        writers = [i for i, r in sorted(roles.items()) if r in ("primary", "master")]
        if not writers:
            if c.spec.standby_of == req.standby_of:
                # Already done (a retry): the last result, or what the disk says now.
                if c.last_demote is not None:
                    return c.last_demote
                idx = next((i for i, r in roles.items() if r == "standby_leader"), 1)
                name = node_name(cluster, idx)
                _, lsn = self._disk_lsn(c.layout.data_dir(name))
                return DemoteResult(node=name, final_lsn=lsn or "0/0", writer_down_s=0.0)
            if c.spec.standby_of is not None and roles:
                # A standby cluster pointed at another source: re-point it.
                return self._repoint(c, req, roles, t0)
            if any(proc.is_running(c.nodes[i].pid) for i in (1, 2, 3)):
                raise Conflict(f"cluster {cluster} has no running writer right now "
                               f"(roles {roles or 'unknown'}); retry once Patroni has elected one")
            raise Conflict(f"cluster {cluster} is not running; use fence to make a stopped cluster "
                           "a standby of another")
        idx = writers[0]
        name = node_name(cluster, idx)
        data_dir = c.layout.data_dir(name)
        pm = proc.postmaster_pid(data_dir)
        current, _ = dcs.read_config(self.region, cluster, self.settings.host)
        new_spec = c.spec.model_copy(update={"standby_of": req.standby_of})
        # Persist first: whatever happens next, this cluster only ever comes back as a standby.
        persist_spec(c.layout, new_spec)
        c.spec = new_spec
        patch = dcs.dcs_patch(new_spec, current or {}) or {}
        patch.setdefault("standby_cluster", dcs.standby_cluster_config(req.standby_of))
        steps["persisted"] = time.monotonic() - t0
        how = self._apply_dcs(c, patch, current or {}, prefer_rest=c.ports.rest(idx))
        steps["patched"] = time.monotonic() - t0
        log.info("%s: demoting writer %s to a standby cluster of %s:%s (%s)", cluster, name,
                 req.standby_of.host, req.standby_of.port, how)
        pid_file = data_dir / "postmaster.pid"
        cd = None
        while pid_file.exists() and proc.is_running(pm):
            if raw_cluster_state(data_dir) == DB_SHUTDOWNED:
                cd = controldata_or_none(self.settings.pg_bin_dir, data_dir)
                if cd is not None and cd.state == "shut down":
                    # The shutdown checkpoint is written: its record is the writer's last WAL, its
                    # clients are gone and new ones are refused. Waiting for the postmaster to exit
                    # as well would add its walsenders' and archiver's last pass (30-70 ms measured),
                    # which the target's confirm_lsn overlaps instead.
                    steps["shutdown checkpoint"] = time.monotonic() - t0
                    break
            if time.monotonic() >= deadline:
                raise Timeout(f"writer {name} of {cluster} still running {req.timeout:.0f} s after it was told "
                              "to become a standby; the cluster is left as it is (standby_of set)")
            time.sleep(POLL_DOWN_S)
        down_s = time.monotonic() - t0
        if cd is None or cd.state != "shut down":
            cd = controldata_or_none(self.settings.pg_bin_dir, data_dir)
        final = cd.checkpoint_lsn if cd else None
        if cd is None or cd.state != "shut down":
            # not a clean shutdown (killed?): the end of WAL is the honest final position
            _, final = self._disk_lsn(data_dir)
        result = DemoteResult(node=name, final_lsn=final or "0/0", writer_down_s=round(down_s, 4))
        c.last_demote = result
        save_result(c, "demote", result)
        log.info("%s: writer %s down after %.3f s, final LSN %s (%s); steps %s", cluster, name, down_s,
                 result.final_lsn, cd.state if cd else "no control data",
                 " ".join(f"{k}={v * 1000:.0f}ms" for k, v in steps.items()))
        return result

    def _repoint(self, c: ClusterRuntime, req: DemoteRequest, roles: dict[int, str], t0: float) -> DemoteResult:
        current, _ = dcs.read_config(self.region, c.spec.cluster, self.settings.host)
        new_spec = c.spec.model_copy(update={"standby_of": req.standby_of})
        persist_spec(c.layout, new_spec)
        c.spec = new_spec
        patch = dcs.dcs_patch(new_spec, current or {})
        if patch:
            self._apply_dcs(c, patch, current or {})
        idx = next((i for i, r in roles.items() if r == "standby_leader"), min(roles))
        name = node_name(c.spec.cluster, idx)
        _, lsn = self._disk_lsn(c.layout.data_dir(name))
        return DemoteResult(node=name, final_lsn=lsn or "0/0", writer_down_s=round(time.monotonic() - t0, 4))

    # --- promote -------------------------------------------------------------------------------

    def promote(self, cluster: str, req: PromoteRequest) -> PromoteResult:
        """Turn a standby cluster into the writer: remove its standby_cluster and poll
        pg_is_in_recovery() every 5 ms (pg_promote(wait) would poll every 100 ms)."""
        return self._locked_request(cluster, req, self._promote)

    def _stop_stuck_writer(self, c: ClusterRuntime, deadline: float) -> dict[int, str]:
        """A node whose postmaster runs while Patroni reports no running leader (a writer stuck
        in its shutdown, e.g. waiting on a frozen walsender) is stopped at once; then wait for
        Patroni to restart a leader. Crash recovery keeps every commit flushed on that node."""
        killed = []
        for i in range(1, c.spec.node_count + 1):
            pm = proc.postmaster_pid(c.layout.data_dir(node_name(c.spec.cluster, i)))
            if pm:
                killed += proc.kill_postmaster_tree(pm)
        if killed:
            log.warning("%s: writer stuck shutting down: SIGKILLed %s so that it restarts", c.spec.cluster, killed)
            proc.wait_gone(killed, 5)
        while time.monotonic() < deadline:
            roles = self._roles(c)
            if any(r in ("primary", "master", "standby_leader") for r in roles.values()):
                return roles
            time.sleep(0.2)
        return self._roles(c)

    def _promote(self, c: ClusterRuntime, req: PromoteRequest, t0: float) -> PromoteResult:
        cluster = c.spec.cluster
        deadline = t0 + req.timeout
        steps = {"locked": time.monotonic() - t0}
        roles = self._roles(c)
        steps["roles"] = time.monotonic() - t0
        writers = [i for i, r in sorted(roles.items()) if r in ("primary", "master")]
        if writers and c.spec.standby_of is None:
            if c.last_promote is not None and c.last_promote.node == node_name(cluster, writers[0]):
                return c.last_promote
            name = node_name(cluster, writers[0])
            with self._connect_node(c, writers[0]) as wconn:
                info = lsn_info(wconn, name)
                switch = timeline_switch_point(wconn, info.timeline or 1)
            return PromoteResult(node=name, promoted_s=0.0, switch_lsn=switch, timeline=info.timeline)
        leaders = [i for i, r in sorted(roles.items()) if r == "standby_leader"]
        if not leaders and req.stop_stuck_writer and not writers:
            roles = self._stop_stuck_writer(c, deadline)
            writers = [i for i, r in sorted(roles.items()) if r in ("primary", "master")]
            if writers and c.spec.standby_of is None:
                return self._promote(c, req.model_copy(update={"stop_stuck_writer": False}), t0)
            leaders = [i for i, r in sorted(roles.items()) if r == "standby_leader"]
        if not leaders:
            raise Conflict(f"cluster {cluster} has no running standby leader to promote "
                           f"(roles {roles or 'none running'}); power it on and wait until it streams")
        idx = leaders[0]
        name = node_name(cluster, idx)
        current, _ = dcs.read_config(self.region, cluster, self.settings.host)
        steps["config read"] = time.monotonic() - t0
        old_spec = c.spec
        new_spec = c.spec.model_copy(update={"standby_of": None})
        # Persist first: an agent restarted after the PATCH must not demote it again.
        persist_spec(c.layout, new_spec)
        c.spec = new_spec
        patch = dcs.dcs_patch(new_spec, current or {}) or {"standby_cluster": None}
        try:
            how = self._apply_dcs(c, patch, current or {}, prefer_rest=c.ports.rest(idx))
        except Exception:
            persist_spec(c.layout, old_spec)
            c.spec = old_spec
            raise
        steps["patched"] = time.monotonic() - t0
        log.info("%s: promoting standby leader %s (%s)", cluster, name, how)
        # Connected after the PATCH, not before: Patroni and PostgreSQL promote (~40 ms) while the
        # connection is made (10-25 ms measured on a busy machine).
        conn: psycopg.Connection | None = None
        before: str | None = None  # the replay position: the fork point when the history file is unreadable
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = self._connect_node(c, idx, connect_timeout=1)
                        steps.setdefault("connected", time.monotonic() - t0)
                        before = before or one_value(conn, "SELECT pg_last_wal_replay_lsn()::text")
                    if not one_value(conn, "SELECT pg_is_in_recovery()"):
                        break
                except psycopg.Error:
                    if conn is not None:
                        conn.close()
                if time.monotonic() >= deadline:
                    raise Timeout(f"{name} of {cluster} still in recovery {req.timeout:.0f} s after its "
                                  "standby_cluster was removed; left as it is (standby_of cleared)")
                time.sleep(POLL_PROMOTE_S)
            promoted_s = time.monotonic() - t0
            info = lsn_info(conn, name)
            switch = timeline_switch_point(conn, info.timeline or 1) or before
        finally:
            if conn is not None:
                conn.close()
        self._wait_routed(c, name, min(deadline, time.monotonic() + ROUTE_WAIT_S))
        steps["routed"] = time.monotonic() - t0
        result = PromoteResult(node=name, promoted_s=round(promoted_s, 4), switch_lsn=switch,
                               timeline=info.timeline)
        c.last_promote = result
        save_result(c, "promote", result)
        log.info("%s: %s promoted in %.3f s, timeline %s forks at %s; steps %s", cluster, name, promoted_s,
                 info.timeline, switch, " ".join(f"{k}={v * 1000:.0f}ms" for k, v in steps.items()))
        return result

    def _mark_up(self, c: ClusterRuntime, name: str) -> bool:
        """Tell the cluster's HAProxy, through its runtime API, that ``name`` (just promoted:
        pg_is_in_recovery() is false) is up in the writer endpoint, instead of waiting for its
        next check of a down server (every 100 ms), and read back that it is. HAProxy's own
        checks go on: a server wrongly marked up is marked down after two failed checks (fall 2).
        False when the runtime API cannot say so (an HAProxy started without the socket)."""
        sock = c.layout.proxy_socket
        try:
            said = haproxy_command(sock, f"set server primary_nodes/{name} health up", timeout=1.0).strip()
            if said:
                log.info("%s: HAProxy refused to mark %s up: %s", c.spec.cluster, name, said)
                return False
            return server_running(haproxy_command(sock, "show servers state primary_nodes", timeout=1.0), name)
        except OSError as exc:
            log.info("%s: HAProxy runtime API not reachable (%s); waiting for its health check", c.spec.cluster, exc)
            return False

    def _wait_routed(self, c: ClusterRuntime, name: str, limit: float) -> bool:
        """Make sure the cluster's writer endpoint (its HAProxy, which checks Patroni's GET
        /primary every 100 ms while a server is down) routes to the promoted writer before the
        promote returns. Returning earlier, the control plane repoints and RESUMEs the pooler at
        once, PgBouncer's first server login can reach HAProxy before its check flips, fail, and
        PgBouncer then waits server_login_retry (1 s) before trying again: measured, 4 of 9
        planned moves held pooled writes ~1 s longer. The writer is marked up through HAProxy's
        runtime API (``_mark_up``, ~1 ms); without it, a connection through the endpoint is tried
        every 10 ms (one TLS connection each, 20-50 ms on a busy machine). Bounded: past
        ``limit`` it returns False (the move goes on as before)."""
        if self._mark_up(c, name):
            return True
        while True:
            try:
                with connect_superuser(c.spec, c.ports.primary, self.settings.host, connect_timeout=1) as conn:
                    if not one_value(conn, "SELECT pg_is_in_recovery()"):
                        return True
            except psycopg.Error:
                pass  # no server up behind the endpoint yet: HAProxy closed the connection
            if time.monotonic() >= limit:
                log.warning("%s: the writer endpoint does not reach %s yet; going on", c.spec.cluster, name)
                return False
            time.sleep(POLL_ROUTED_S)

    # --- fence ---------------------------------------------------------------------------------

    def _kill_nodes(self, c: ClusterRuntime) -> list[int]:
        killed: list[int] = []
        for i in (1, 2, 3):
            name = node_name(c.spec.cluster, i)
            n = c.nodes[i]
            n.expected_running = False
            pid = n.pid or proc.read_pid(c.layout.patroni_pid(name))
            if pid and proc.pid_matches(pid, str(c.layout.patroni_yml(name))):
                proc.signal_pid(pid, signal.SIGKILL)
                killed.append(pid)
            pm = proc.postmaster_pid(c.layout.data_dir(name))
            if pm:
                killed += proc.kill_postmaster_tree(pm)[:1]
            n.pid, n.popen = None, None
        if c.proxy_pid and proc.is_running(c.proxy_pid):
            proc.signal_pid(c.proxy_pid, signal.SIGKILL)
            killed.append(c.proxy_pid)
        proc.wait_gone(killed, 10)
        return killed

    def fence(self, cluster: str, req: FenceRequest) -> FenceResult:
        """Stop every process of the cluster now (SIGKILL), power it off and, when ``standby_of``
        is given, make sure it can only come back as a standby of that source."""
        c = self.clusters.get(cluster)
        update: dict[str, Any] = {"powered": False}
        if req.standby_of is not None:
            update["standby_of"] = req.standby_of
        with self.clusters.lock:
            new_spec = c.spec.model_copy(update=update)
            persist_spec(c.layout, new_spec)
            c.spec = new_spec
        # Kill at once, without waiting for a converge step in progress...
        killed = self._kill_nodes(c)
        # ...then once it is over, again: it may have started a node from the old spec.
        got = c.act_lock.acquire(timeout=60)
        try:
            killed += [p for p in self._kill_nodes(c) if p not in killed]
            c.proxy_pid = None
            c.endpoint_verified = None
            if self.etcd.healthy:
                self.sync_dcs(c)  # no Patroni runs: straight into etcd
            else:
                c.dcs_synced = False  # synced before anything starts again (decide)
            last = None
            for i in (1, 2, 3):
                try:
                    _, lsn = self._disk_lsn(c.layout.data_dir(node_name(cluster, i)))
                except Exception as exc:
                    log.info("%s: no LSN from node %s: %s", cluster, i, exc)
                    lsn = None
                last = max_lsn(last, lsn)
        finally:
            if got:
                c.act_lock.release()
        log.info("%s: fenced (killed %s), last LSN on disk %s, standby_of %s", cluster, killed, last,
                 c.spec.standby_of)
        return FenceResult(killed_pids=killed, last_lsn=last)

    # --- preserve ------------------------------------------------------------------------------
    # A job like the rebuild: the POST checks and starts it, a thread copies, GET reports it. The
    # job state is persisted (preserve-job.json): an agent restarted mid-copy reports it failed.

    def get_preserve(self, cluster: str) -> PreserveState | None:
        return self.clusters.get(cluster).preserve

    def preserve(self, cluster: str, req: PreserveRequest) -> PreserveState:
        """Start keeping the old writer's data directory aside and listing its commits after
        ``fork_lsn`` (or answer the job of the same ``request_id``, or the result kept by an
        earlier preserve of the same data). The cluster must be stopped (fenced)."""
        parse_lsn(req.fork_lsn)  # ValueError -> 400 at the edge
        c = self.clusters.get(cluster)
        self._lock_cluster(c, 60)
        try:
            job = c.preserve
            if job is not None and req.request_id is not None and job.request_id == req.request_id:
                return job
            if c.preserve_active and job is not None:
                raise Conflict(f"cluster {cluster} is being preserved already (request {job.request_id}, started "
                               f"{job.started}); poll GET /clusters/{cluster}/preserve")
            if c.rebuild_active:
                raise Conflict(f"cluster {cluster} is being rebuilt; its old data can no longer be preserved")
            for i in (1, 2, 3):
                name = node_name(cluster, i)
                if proc.postmaster_pid(c.layout.data_dir(name)) or proc.is_running(c.nodes[i].pid):
                    raise Conflict(f"{name} of {cluster} is running; fence the cluster before preserving its data")
            request_id = req.request_id or uuid.uuid4().hex
            best = most_advanced(self.settings.pg_bin_dir, c.data_dirs())
            job = PreserveState(request_id=request_id, fork_lsn=req.fork_lsn, started=now_iso())
            if best is None:
                # The disk of the old writer is gone: nothing to keep; the rebuild that follows
                # restores from the region's backups or copies the active service.
                log.info("%s: no data directory left to preserve", cluster)
                job = job.model_copy(update={
                    "state": "done", "finished": job.started, "message": "no data directory left to preserve",
                    "result": PreserveResult(path="", bytes=0, end_lsn=None, commits=[])})
            else:
                name, cd, end = best
                job.node = name
                kept = self._kept_preserve(c, req.fork_lsn, name, end)
                if kept is not None:  # already kept: idempotent
                    job = job.model_copy(update={"state": "done", "finished": job.started, "result": kept,
                                                 "message": f"already kept at {kept.path}"})
                else:
                    job.message = f"copying the data directory of {name}"
                    c.preserve_active = True  # from here on nothing starts on this cluster
            c.preserve = job
            save_result(c, "preserve-job", job)
        finally:
            c.act_lock.release()
        if job.state == "running":
            assert best is not None
            threading.Thread(target=self._preserve_run, args=(c, req.fork_lsn, *best),
                             name=f"preserve-{cluster}", daemon=True).start()
        return job

    def _kept_preserve(self, c: ClusterRuntime, fork_lsn: str, node: str, end: str | None) -> PreserveResult | None:
        """The result of an earlier preserve of the same node's data at the same end and fork."""
        for meta in sorted((c.layout.dir / "preserved").glob("*/preserve.json"), reverse=True):
            try:
                old = json.loads(meta.read_text())
                if old.get("fork_lsn") == fork_lsn and old.get("node") == node and old.get("source_end") == end:
                    return PreserveResult.model_validate(old["result"])
            except (OSError, ValueError):
                continue
        return None

    def _set_preserve(self, c: ClusterRuntime, **changes: Any) -> None:
        assert c.preserve is not None
        c.preserve = c.preserve.model_copy(update=changes)
        try:
            save_result(c, "preserve-job", c.preserve)
        except OSError as exc:  # the cluster is being deleted
            log.info("%s: preserve state not saved: %s", c.spec.cluster, exc)

    def _preserve_run(self, c: ClusterRuntime, fork_lsn: str, name: str, cd: ControlData, end: str | None) -> None:
        cluster = c.spec.cluster
        try:
            root = c.layout.dir / "preserved"
            # copies an interrupted job left half-done (no preserve.json) are only wasted disk
            for partial in root.glob("*"):
                if partial.is_dir() and not (partial / "preserve.json").exists():
                    shutil.rmtree(partial, ignore_errors=True)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            dest = root / stamp
            dest.mkdir(parents=True)
            root.chmod(0o700)
            t0 = time.monotonic()
            shutil.copytree(c.layout.data_dir(name), dest / "data", symlinks=True)
            (dest / "data" / "postmaster.pid").unlink(missing_ok=True)
            size = sum(f.stat().st_size for f in (dest / "data").rglob("*") if f.is_file() and not f.is_symlink())
            t1 = time.monotonic()
            commits, wal_end = commits_after(self.settings.pg_bin_dir, dest / "data" / "pg_wal", cd.timeline,
                                             fork_lsn)
            t2 = time.monotonic()
            result = PreserveResult(path=str(dest / "data"), bytes=size, end_lsn=max_lsn(end, wal_end),
                                    commits=commits)
            meta = dest / "preserve.json"
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({
                "fork_lsn": fork_lsn, "node": name, "source_end": end, "timeline": cd.timeline,
                "result": result.model_dump(mode="json"),
            }))
            tmp.replace(meta)  # written last: a copy without it is incomplete
            log.info("%s: preserved %s of %s at %s (%d bytes, copied in %.1f s); %d commits after %s "
                     "(listed in %.1f s)", cluster, c.layout.data_dir(name), name, dest, size, t1 - t0,
                     len(commits), fork_lsn, t2 - t1)
            self._set_preserve(c, state="done", finished=now_iso(), result=result,
                               message=f"kept at {result.path}; {len(commits)} commits after {fork_lsn}")
        except Exception as exc:
            log.exception("%s: preserve failed", cluster)
            self._set_preserve(c, state="failed", finished=now_iso(), message=f"preserve failed: {exc}")
        finally:
            c.preserve_active = False

    # --- region outage drill -------------------------------------------------------------------

    def region_outage(self, delay: float = 0.2) -> None:
        """SIGKILL every process of the region and then the agent itself, keeping the disk."""

        def _die() -> None:
            time.sleep(delay)  # let the HTTP answer leave
            killed = kill_region_now(self.settings, self.region)
            log.warning("region outage drill: SIGKILLed %s; the agent dies now", killed)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=_die, name="region-outage", daemon=True).start()
