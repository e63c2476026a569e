"""Stopping a region's processes from files alone (pid files under ``<region_dir>/run`` and
the ``postmaster.pid`` of each data directory), so a region can be stopped while its agent is dead.
"""

from __future__ import annotations

import logging
import os
import signal

from pgcrdr.agent.layout import RegionLayout
from pgcrdr.config import RegionConfig, Settings
from pgcrdr.processes import (
    children_of,
    cmdline,
    is_running,
    kill_postmaster_tree,
    pid_matches,
    postmaster_pid,
    processes_under,
    read_pid,
    signal_pid,
    wait_gone,
)

log = logging.getLogger(__name__)


def stop_region_processes(settings: Settings, region: RegionConfig, graceful: bool = True,
                          timeout: float = 20.0) -> list[int]:
    """Stop every process of ``region`` by PID, from files alone (works with the agent dead).

    Sources: pid files under ``<region_dir>/run``, ``postmaster.pid`` of every data directory,
    and finally any process whose command line or working directory lies in the region
    directory (backends left by a killed postmaster). ``graceful``: SIGTERM Patroni/HAProxy/
    etcd and fast-shutdown the postmasters first, SIGKILL what is left after ``timeout``;
    otherwise SIGKILL at once (a region outage). Returns the pids signalled.
    """
    layout = RegionLayout(settings.region_dir(region))
    marker = str(layout.region_dir)
    signalled: list[int] = []
    pid_files = sorted(layout.run_dir.glob("*.pid")) if layout.run_dir.is_dir() else []
    postmasters = sorted(layout.clusters_dir.glob("*/nodes/*/data/postmaster.pid")) \
        if layout.clusters_dir.is_dir() else []
    children = [p for p in (read_pid(f) for f in pid_files) if pid_matches(p, marker)]
    pms = [p for p in (postmaster_pid(f.parent) for f in postmasters) if p]
    if graceful:
        # Patroni first (it shuts its postmaster down itself), etcd last (Patroni needs it).
        non_etcd = [p for p in children if "etcd" not in cmdline(p).split(" ", 1)[0]]
        etcd = [p for p in children if p not in non_etcd]
        for p in non_etcd:
            signal_pid(p, signal.SIGTERM)
        for p in pms:
            signal_pid(p, signal.SIGINT)
        signalled += non_etcd + pms
        wait_gone(non_etcd + pms, timeout)
        for p in etcd:
            signal_pid(p, signal.SIGTERM)
        signalled += etcd
        wait_gone(etcd, 5)
    for p in children + pms:
        if is_running(p):
            if p in pms:
                kill_postmaster_tree(p)
            else:
                signal_pid(p, signal.SIGKILL)
            if p not in signalled:
                signalled.append(p)
    wait_gone(children + pms, 5)
    if layout.region_dir.is_dir():
        leftovers = processes_under(layout.region_dir)
        for p in leftovers:
            signal_pid(p, signal.SIGKILL)
            if p not in signalled:
                signalled.append(p)
        wait_gone(leftovers, 5)
    for f in pid_files:
        f.unlink(missing_ok=True)
    if signalled:
        log.info("stopped processes of region %s: %s (marker %s)", region.cloud_name, signalled, marker)
    return signalled


def kill_region_now(settings: Settings, region: RegionConfig) -> list[int]:
    """SIGKILL every process of ``region`` at once (an outage drill): first collect them all
    (children by pid file, postmasters and their backends, anything running in the region
    directory), then signal them in one pass. The disk is left as it is, pid files included."""
    layout = RegionLayout(settings.region_dir(region))
    marker = str(layout.region_dir)
    pids: list[int] = []
    if layout.run_dir.is_dir():
        pids += [p for p in (read_pid(f) for f in layout.run_dir.glob("*.pid")) if pid_matches(p, marker)]
    if layout.clusters_dir.is_dir():
        for f in layout.clusters_dir.glob("*/nodes/*/data/postmaster.pid"):
            pm = postmaster_pid(f.parent)
            if pm:
                pids += [pm, *children_of(pm)]
    if layout.region_dir.is_dir():
        pids += processes_under(layout.region_dir)
    me = os.getpid()
    targets = sorted({p for p in pids if p and p != me})
    for p in targets:
        signal_pid(p, signal.SIGKILL)
    return targets
