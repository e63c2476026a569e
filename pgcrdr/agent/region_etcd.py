"""The region's etcd process: started (or adopted) when the agent starts, restarted when it
exits, its health read every second for the parts that must not act without it."""

from __future__ import annotations

import logging
import signal
import threading
import time

from pgcrdr import processes as proc
from pgcrdr.agent import etcd as etcd_mod
from pgcrdr.agent.layout import RegionLayout
from pgcrdr.agent.postgres import last_error_line
from pgcrdr.config import RegionConfig, Settings

log = logging.getLogger(__name__)

SUPERVISE_TICK_S = 1.0
START_TIMEOUT_S = 20.0


class RegionEtcd:
    def __init__(self, settings: Settings, region: RegionConfig, layout: RegionLayout, stop: threading.Event):
        self.settings = settings
        self.region = region
        self.layout = layout
        self._stop = stop
        self._pid: int | None = None
        self._supervisor: threading.Thread | None = None
        self.healthy = False  # as last seen by the supervisor

    def start(self) -> None:
        """Start (or adopt) etcd and wait until it answers (at most START_TIMEOUT_S)."""
        self._ensure(wait=True)

    def supervise_in_background(self) -> None:
        """Restart etcd whenever it exits, and refresh ``healthy``, until ``stop`` is set."""
        self._supervisor = threading.Thread(target=self._supervise, name="etcd-supervisor", daemon=True)
        self._supervisor.start()

    def check_health(self) -> bool:
        """Asked now, not the supervisor's last look."""
        return etcd_mod.etcd_healthy(self.region, self.settings.host)

    def last_error(self) -> str | None:
        return last_error_line([self.layout.etcd_log])

    def _ensure(self, wait: bool) -> None:
        marker = str(self.layout.etcd_dir)
        pid = self._pid or proc.read_pid(self.layout.etcd_pid)
        if proc.pid_matches(pid, marker):
            self._pid = pid
        else:
            popen = proc.spawn(
                self.settings,
                etcd_mod.etcd_argv(self.region, str(self.layout.etcd_dir), self.settings.host),
                pid_file=self.layout.etcd_pid, log_file=self.layout.etcd_log, cwd=self.layout.etcd_dir,
            )
            self._pid = popen.pid
        if wait:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.check_health():
                    self.healthy = True
                    return
                if not proc.is_running(self._pid):
                    break
                time.sleep(0.2)
            log.error("etcd of region %s not healthy after start: %s", self.region.cloud_name, self.last_error())

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_TICK_S):
            try:
                if not proc.is_running(self._pid):
                    log.warning("etcd of region %s exited; restarting", self.region.cloud_name)
                    self._ensure(wait=False)
                self.healthy = self.check_health()
            except Exception:  # keep supervising whatever happens
                log.exception("etcd supervision failed")

    def stop(self) -> None:
        pid = self._pid
        if pid and proc.is_running(pid):
            proc.signal_pid(pid, signal.SIGTERM)
            if proc.wait_gone([pid], 10):
                proc.signal_pid(pid, signal.SIGKILL)
                proc.wait_gone([pid], 5)
        self.layout.etcd_pid.unlink(missing_ok=True)
