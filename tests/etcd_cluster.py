"""Real etcd members on 127.0.0.1 for store tests: started on free ports, stopped by PID."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.helpers import port_free

ETCD = "/usr/bin/etcd"
# Above the kernel's ephemeral range (32768-60999), where no outgoing connection takes one of
# them, and the test platforms' port blocks; each is checked free before use.
PORTS = range(61000, 65000)
START_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, even killed (its finalizers never run)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.choice(PORTS)
        if port not in chosen and port_free(port):
            chosen.append(port)
    return chosen


class EtcdCluster:
    """``size`` etcd members forming one cluster, each with its own data directory under ``base``."""

    def __init__(self, base: Path, size: int = 1):
        self.base = base
        self.size = size
        ports = free_ports(2 * size)
        self.client_ports, self.peer_ports = ports[:size], ports[size:]
        self.procs: list[subprocess.Popen | None] = [None] * size

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    def _argv(self, i: int) -> list[str]:
        peers = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, p in enumerate(self.peer_ports))
        return [ETCD, "--name", f"m{i}", "--data-dir", str(self.base / f"m{i}"),
                "--listen-client-urls", self.endpoints[i], "--advertise-client-urls", self.endpoints[i],
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", peers, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"pgcrdr-test-{os.getpid()}-{self.peer_ports[0]}",
                # fast elections: a killed leader is replaced in about a second
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn"]

    def start(self) -> EtcdCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(self.size):
                with open(self.base / f"m{i}.log", "ab") as log:
                    self.procs[i] = subprocess.Popen(self._argv(i), stdout=log, stderr=subprocess.STDOUT,
                                                     start_new_session=True, preexec_fn=_die_with_parent)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for i, url in enumerate(self.endpoints):
            while True:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"etcd member m{i} exited ({proc.returncode}); see {self.base}/m{i}.log")
                try:
                    if httpx.get(f"{url}/health", timeout=1.0, trust_env=False).json().get("health") == "true":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member m{i} not healthy after {START_TIMEOUT_S:.0f} s; "
                                       f"see {self.base}/m{i}.log")
                time.sleep(0.05)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``, as if its host died."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i)
