"""Which control-plane replica leads: a key in the global etcd, put with a lease.

Every replica serves the API and the console; only the leader runs the reconciler and advances
operations. A replica campaigns by creating the leader key with a lease of ``ttl_s`` (a ``Txn``
that puts it only while it does not exist: ``create_revision == 0``) and, once it holds it,
renews the lease every ``ttl_s / 3``. When the leader dies, its lease expires and the key goes
with it; the next campaign of another replica wins.

Two rules keep two leaders from acting at once:

- **A leader stops by its own clock.** etcd counts a lease's TTL from the moment it received the
  renewal, which is after this replica sent it; so ``sent + ttl`` (monotonic, this host's own clock,
  minus ``SAFETY_S`` for clock rate differences) is a moment before which the key cannot have
  expired. :meth:`LeaderElection.leading` is false from then on, whatever the renewal thread is
  blocked on, and a new leader can only be elected after the key has expired: the old one has
  stopped stepping before the new one starts (a call already sent to an agent may still land;
  every step is idempotent and the new leader runs it again).
- **A leader's writes are fenced by revision** (:meth:`LeaderElection.fence`): the leader's store
  adds the compare "the leader key still has the revision it had when this replica won" to every
  commit, so a write of a deposed leader is refused by etcd itself (``StoreFenced``), not merely
  by its own belief.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pgcrdr.config import Settings
from pgcrdr.etcdv3 import EtcdError, EtcdGateway, EtcdUnreachable, b64

log = logging.getLogger("pgcrdr.leader")

LEADER_KEY = "leader"  # under the store's prefix
SAFETY_S = 0.2  # subtracted from a lease's validity: clock rates of two hosts differ a little


@dataclass(frozen=True)
class Leader:
    """What the leader key says: the replica (its control host's name) and where its API is."""

    name: str
    api_url: str

    def dumps(self) -> str:
        return json.dumps({"name": self.name, "api_url": self.api_url})

    @staticmethod
    def loads(raw: str) -> Leader | None:
        try:
            doc = json.loads(raw)
            return Leader(name=str(doc["name"]), api_url=str(doc["api_url"]))
        except (ValueError, KeyError, TypeError):
            return None


def read_leader(gateway: EtcdGateway, key: str) -> Leader | None:
    kvs, _, _ = gateway.range(key)
    return Leader.loads(kvs[0].value) if kvs else None


class LeaderElection:
    def __init__(self, gateway: EtcdGateway, key: str, me: Leader, ttl_s: int,
                 clock: Callable[[], float] = time.monotonic):
        if ttl_s < 2:
            raise ValueError("a leader lease shorter than 2 s cannot be renewed in time")
        self.gateway = gateway
        self.key = key
        self.me = me
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._lease: int | None = None
        self._revision: int | None = None  # the key's revision while this replica holds it
        self._valid_until = 0.0  # monotonic: the lease cannot have expired before this
        self._leader: Leader | None = None  # the last leader seen (this replica, or the other one)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: Callable[[bool], None] = lambda leading: None

    # --- what the rest of the replica asks ------------------------------------------------------
    def leading(self) -> bool:
        """Whether this replica may act as the leader now (false from its lease's safe end on)."""
        with self._lock:
            return self._revision is not None and self.clock() < self._valid_until

    def fence(self) -> tuple[str, int] | None:
        """(leader key, its revision) while leading, for the store's compare; None: not leading."""
        with self._lock:
            if self._revision is None or self.clock() >= self._valid_until:
                return None
            return self.key, self._revision

    def leader(self) -> Leader | None:
        """The leader as last seen (None: nobody holds the key, or it was not read yet)."""
        with self._lock:
            return self.me if self._revision is not None else self._leader

    # --- one cycle ------------------------------------------------------------------------------
    def step(self) -> str:
        """Renew the lease when holding the key, else campaign once; returns what happened."""
        was = self.leading()
        said = self._renew() if self._holding() else self._campaign()
        now = self.leading()
        if now != was:
            log.warning("%s", said)
            self.on_change(now)
        return said

    def _holding(self) -> bool:
        with self._lock:
            return self._revision is not None

    def _renew(self) -> str:
        assert self._lease is not None
        sent = self.clock()
        try:
            ttl = self.gateway.lease_keepalive(self._lease)
        except (EtcdUnreachable, EtcdError) as exc:
            left = self._valid_until - self.clock()
            if left > 0:
                return f"{self.me.name}: renewing the leader lease failed ({exc}); still leading for {left:.1f}s"
            self._drop()
            return f"{self.me.name}: lost the leadership: the lease could not be renewed before it expired ({exc})"
        if ttl <= 0:
            self._drop()
            return f"{self.me.name}: lost the leadership: its lease had expired when it was renewed"
        with self._lock:
            self._valid_until = sent + ttl - SAFETY_S
        return f"{self.me.name}: leads (lease renewed for {ttl}s)"

    def _campaign(self) -> str:
        try:
            current = read_leader(self.gateway, self.key)
            if current is not None:  # no lease is granted (three writes) while someone leads
                with self._lock:
                    self._leader = current
                return f"{self.me.name}: follows {current.name}"
            lease = self.gateway.lease_grant(self.ttl_s)
        except (EtcdUnreachable, EtcdError) as exc:
            return f"{self.me.name}: cannot campaign, the store does not answer: {exc}"
        sent = self.clock()
        create_only = [{"key": b64(self.key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}]
        put = [{"request_put": {"key": b64(self.key), "value": b64(self.me.dumps()), "lease": str(lease)}}]
        get = [{"request_range": {"key": b64(self.key)}}]
        try:
            won, revision = self.gateway.txn(create_only, put, get)
        except (EtcdUnreachable, EtcdError) as exc:
            # whether the put was applied is unknown: the lease is revoked, so it cannot hold the key
            self._revoke(lease)
            return f"{self.me.name}: campaign got no answer ({exc}); its lease is revoked"
        if won:
            with self._lock:
                self._lease, self._revision, self._valid_until = lease, revision, sent + self.ttl_s - SAFETY_S
            return f"{self.me.name}: won the leadership (revision {revision})"
        self._revoke(lease)
        try:
            current = read_leader(self.gateway, self.key)
        except (EtcdUnreachable, EtcdError):
            current = None
        with self._lock:
            self._leader = current
        return f"{self.me.name}: follows {current.name if current else 'a leader whose key just went'}"

    def _drop(self) -> None:
        with self._lock:
            lease, self._lease, self._revision, self._valid_until = self._lease, None, None, 0.0
        if lease is not None:
            self._revoke(lease)

    def _revoke(self, lease: int) -> None:
        try:
            self.gateway.lease_revoke(lease)
        except (EtcdUnreachable, EtcdError):
            pass  # it expires by itself within its TTL

    # --- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                said = self.step()
                log.debug("%s", said)
            except Exception:  # noqa: BLE001 - the next cycle tries again; leading() bounds the harm
                log.exception("leader election cycle failed")
            self._stop.wait(self.ttl_s / 3)

    def resign(self) -> None:
        """Stop campaigning; a leader gives the key up at once (the next leader need not wait
        for the lease to expire)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
        was = self.leading()
        self._drop()
        if was:
            self.on_change(False)
        self.gateway.close()


def election_for(settings: Settings) -> LeaderElection | None:
    """The election of this control plane's replica, when its state is in etcd (None: SQLite,
    one replica, which always leads)."""
    from pgcrdr.controlplane.store.settings import StoreSettings

    chosen = StoreSettings.for_settings(settings)
    if chosen.backend != "etcd":
        return None
    # A renewal that takes longer than a third of the lease is as good as lost: the next one is due.
    gateway = EtcdGateway(list(chosen.endpoints), timeout=max(1.0, settings.leader_ttl_s / 3), tls=chosen.tls)
    return LeaderElection(gateway, chosen.prefix + LEADER_KEY, Leader(settings.control_host, settings.api_url),
                          settings.leader_ttl_s)
