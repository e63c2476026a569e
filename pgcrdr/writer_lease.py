"""The writer lease: a region may run a writer only while it holds its lease in the global etcd.

A region cut off from the rest (its processes alive) must not go on taking writes from clients
inside it once the other region may have been promoted. With a global etcd spread over the
regions and a witness, a cut-off region cannot renew its lease, so:

- **the agent** (``WriterLease``) holds ``<prefix>writer-leases/<cloud>`` bound to an etcd lease
  of ``ttl_s`` seconds, renews it every ``ttl_s / 3``, and may run a writer only until
  ``fence_at`` = the moment it *sent* its last successful renewal + ``ttl_s`` - ``margin_s``.
  etcd counts the TTL from when it received that renewal (later), so the agent has stopped its
  writers before etcd lets the key go, as long as the clocks' rates agree within the margin.
- **the control plane** (``lease_holder``) promotes the recovery of an unreachable primary only
  once the primary region's key is gone (expired: its agent has fenced itself) or the old writer
  is confirmed fenced; the time waited goes in the failover's report.

A region that lost its lease keeps its writers stopped until the control plane confirms what it
must run (it may have been failed over meanwhile), even once the lease is back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgcrdr.etcdv3 import EtcdError, EtcdGateway, EtcdUnreachable, StoreTLS

if TYPE_CHECKING:
    from pgcrdr.controlplane.store.settings import StoreSettings
    from pgcrdr.config import Settings

log = logging.getLogger("pgcrdr.writer_lease")

DEFAULT_TTL_S = 10.0
RETRY_S = 0.5  # after a failed renewal: try again soon, the deadline is running


def lease_key(prefix: str, cloud: str) -> str:
    return f"{prefix}writer-leases/{cloud}"


def margin_for(ttl_s: float) -> float:
    """What the agent keeps between stopping its writers and etcd letting the key go: the time to
    stop them (a SIGKILL, well under a second) plus slack for clock rates, a quarter of the TTL."""
    return ttl_s / 4


@dataclass(frozen=True)
class LeaseState:
    held: bool  # a writer may run now
    fence_in_s: float | None  # seconds left before the writers must be stopped (None: not held)
    last_error: str | None


class WriterLease:
    """The agent's side: a thread keeps the region's lease; ``allowed()`` is read by every tick."""

    def __init__(self, endpoints: list[str], prefix: str, cloud: str, holder: str,
                 ttl_s: float = DEFAULT_TTL_S, clock: Any = time.monotonic, tls: StoreTLS | None = None):
        self.key = lease_key(prefix, cloud)
        self.ttl_s = ttl_s
        self.margin_s = margin_for(ttl_s)
        self.holder = holder
        self._clock = clock
        # every call bounded well inside the TTL: a member that hangs must not hold the renewals
        self._gw = EtcdGateway(endpoints, timeout=max(1.0, ttl_s / 4), tls=tls)
        self._lease: int | None = None
        self._fence_at: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writer-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give the lease up (the agent is stopping its writers itself)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.ttl_s)
        with self._lock:
            lease, self._lease, self._fence_at = self._lease, None, None
        if lease is not None:
            try:
                self._gw.lease_revoke(lease)
            except (EtcdError, EtcdUnreachable) as exc:
                log.info("writer lease not revoked (it expires by itself): %s", exc)
        self._gw.close()

    def allowed(self) -> bool:
        with self._lock:
            return self._fence_at is not None and self._clock() < self._fence_at

    def state(self) -> LeaseState:
        with self._lock:
            left = None if self._fence_at is None else self._fence_at - self._clock()
            held = left is not None and left > 0
            return LeaseState(held=held, fence_in_s=round(left, 2) if held and left is not None else None,
                              last_error=self._last_error)

    def renew_once(self) -> bool:
        """Grant (when none is held) or renew the lease; True when it holds after this call."""
        sent = self._clock()
        try:
            lease = self._lease
            if lease is not None and self._gw.lease_keepalive(lease) <= 0:
                lease = None  # expired already: its key is gone, a new lease is needed
            if lease is None:
                lease = self._gw.lease_grant(int(self.ttl_s))
                self._gw.put(self.key, json.dumps({"holder": self.holder, "granted": time.time()}), lease=lease)
        except (EtcdError, EtcdUnreachable, ValueError, KeyError) as exc:
            with self._lock:
                if self._last_error is None:
                    log.warning("writer lease of %s not renewed: %s", self.key, exc)
                self._last_error = str(exc)[:300]
            return False
        with self._lock:
            if self._last_error is not None:
                log.info("writer lease of %s held again", self.key)
            self._lease, self._last_error = lease, None
            self._fence_at = sent + self.ttl_s - self.margin_s
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self.renew_once()
            self._stop.wait(self.ttl_s / 3 if ok else RETRY_S)


def lease_store(settings: Settings) -> StoreSettings | None:
    """The global etcd (endpoints, key prefix, TLS) when the deployment has one (its control-plane
    store is etcd), else None: the embedded default has no writer leases."""
    from pgcrdr.controlplane.store.settings import StoreSettings

    chosen = StoreSettings.for_settings(settings)
    return chosen if chosen.backend == "etcd" else None


def lease_reader(settings: Settings) -> Callable[[str], dict[str, Any] | None] | None:
    """For the control plane: who holds a region's writer lease (None: no writer leases)."""
    where = lease_store(settings)
    if where is None:
        return None
    gateway = EtcdGateway(list(where.endpoints), tls=where.tls)
    prefix = where.prefix
    return lambda cloud: lease_holder(gateway, prefix, cloud)


def lease_holder(gateway: EtcdGateway, prefix: str, cloud: str) -> dict[str, Any] | None:
    """The record of the region's writer lease while it is held (None: expired or never held)."""
    kvs, _, _ = gateway.range(lease_key(prefix, cloud))
    if not kvs:
        return None
    try:
        value = json.loads(kvs[0].value)
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}
