"""A planned move pauses the pooled Service URI on every control-plane replica, not only on the
leader's.

Every replica runs the pair's endpoints on its own address (``connection_info.pg_multihost``
lists them all), so a PAUSE that held only the leader's PgBouncer left the others' pooled
clients writing to the old writer until it refused them. The leader now publishes an *intent*
per endpoint in the global etcd and every replica applies it to its own PgBouncer:

- ``<prefix>pause/<endpoint>``: the leader's intent, ``{"seq", "phase": "pause"|"resume",
  "deadline" (epoch s), "target", "by"}``; written only while leading (the leader key's revision
  is compared, as for the leader's store), so a deposed leader cannot pause anybody.
- ``<prefix>pause-ack/<endpoint>/<replica>``: each replica's answer to an intent,
  ``{"seq", "state": "seen"|"paused"|"failed"|"resumed", "detail"}``.
- ``<prefix>replicas/<replica>``: the replica is alive (put with a lease of its own, renewed
  every TTL/3): whom the leader waits for.

The leader's PAUSE step completes when its own PAUSE and every live replica's have completed.
A replica that reports its PAUSE failed (a transaction through it stayed open until the pause
deadline) fails the step as the leader's own PAUSE would (the move is undone). A replica that has
not even seen the intent within ``SEEN_BOUND_S`` (its store connection is cut, or it is hung) is
not waited for: its pooled clients may get errors during the move, but never lose an
acknowledged write (the old writer refuses writes before the new one takes them); the step's
detail names it.

**Every replica bounds its own pause.** A replica that applied a PAUSE resumes it by itself at
the intent's deadline, whether or not the leader or the store still answer: no pooled client is
held past the pause deadline because a leader died or a region was cut off.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import httpx

from pgcrdr.agentapi.models import Endpoint
from pgcrdr.controlplane.store.base import StoreFenced
from pgcrdr.endpoint.models import EndpointError, PauseTimeout
from pgcrdr.etcdv3 import EtcdError, EtcdGateway, EtcdUnreachable, b64, prefix_end, unb64

log = logging.getLogger("pgcrdr.pauses")

SEEN_BOUND_S = 1.0  # a live replica sees an intent within milliseconds (a watch); 1 s is generous
ACK_POLL_S = 0.01
WATCH_IDLE_S = 5.0  # an idle watch is re-created (and the intents read again) this often
GUARD_POLL_S = 0.05

Fence = Callable[[], "tuple[str, int] | None"]


@dataclass(frozen=True)
class Intent:
    seq: int
    phase: str  # "pause" | "resume"
    deadline: float  # epoch s: no replica holds pooled writes past it
    by: str  # the leader's term (replica name and term id) that wrote it
    target: dict[str, Any] | None = None  # the writer to point at (set once the move repointed)

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def loads(raw: str) -> Intent | None:
        try:
            d = json.loads(raw)
            return Intent(seq=int(d["seq"]), phase=str(d["phase"]), deadline=float(d["deadline"]), by=str(d["by"]),
                          target=d.get("target"))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Ack:
    seq: int
    state: str  # "seen" | "paused" | "failed" | "resumed"
    detail: str = ""

    @staticmethod
    def loads(raw: str) -> Ack | None:
        try:
            d = json.loads(raw)
            return Ack(seq=int(d["seq"]), state=str(d["state"]), detail=str(d.get("detail") or ""))
        except (ValueError, KeyError, TypeError):
            return None


class PauseBoard:
    """The intents, acknowledgements and live replicas in the global etcd."""

    def __init__(self, gateway: EtcdGateway, prefix: str, fence: Fence | None = None):
        self.gateway = gateway
        self.prefix = prefix
        self.fence = fence

    def _intent_key(self, name: str) -> str:
        return f"{self.prefix}pause/{name}"

    def _ack_prefix(self, name: str) -> str:
        return f"{self.prefix}pause-ack/{name}/"

    @property
    def replicas_prefix(self) -> str:
        return f"{self.prefix}replicas/"

    @property
    def intents_prefix(self) -> str:
        return f"{self.prefix}pause/"

    def publish(self, name: str, intent: Intent) -> None:
        """Write ``intent`` while this replica leads (else StoreFenced: nothing written)."""
        compare: list[dict[str, Any]] = []
        if self.fence is not None:
            guard = self.fence()
            if guard is None:
                raise StoreFenced("this replica no longer leads: the pause intent was not written")
            compare = [{"key": b64(guard[0]), "target": "MOD", "result": "EQUAL", "mod_revision": str(guard[1])}]
        ok, _ = self.gateway.txn(compare, [{"request_put": {"key": b64(self._intent_key(name)),
                                                            "value": b64(intent.dumps())}}])
        if not ok:
            raise StoreFenced("this replica no longer leads: the pause intent was not written")

    def intent(self, name: str) -> Intent | None:
        kvs, _, _ = self.gateway.range(self._intent_key(name))
        return Intent.loads(kvs[0].value) if kvs else None

    def intents(self) -> tuple[dict[str, Intent], int]:
        """Every endpoint's intent, and the revision they were read at."""
        kvs, revision, _ = self.gateway.range(self.intents_prefix, prefix_end(self.intents_prefix))
        out = {}
        for kv in kvs:
            intent = Intent.loads(kv.value)
            if intent is not None:
                out[kv.key[len(self.intents_prefix):]] = intent
        return out, revision

    def acks(self, name: str) -> dict[str, Ack]:
        p = self._ack_prefix(name)
        kvs, _, _ = self.gateway.range(p, prefix_end(p))
        out = {}
        for kv in kvs:
            ack = Ack.loads(kv.value)
            if ack is not None:
                out[kv.key[len(p):]] = ack
        return out

    def ack(self, name: str, replica: str, seq: int, state: str, detail: str = "", lease: int | None = None) -> None:
        self.gateway.put(self._ack_prefix(name) + replica,
                         json.dumps({"seq": seq, "state": state, "detail": detail, "at": time.time()}), lease=lease)

    def live_replicas(self) -> set[str]:
        kvs, _, _ = self.gateway.range(self.replicas_prefix, prefix_end(self.replicas_prefix))
        return {kv.key[len(self.replicas_prefix):] for kv in kvs}

    def register(self, replica: str, lease: int) -> None:
        self.gateway.put(self.replicas_prefix + replica, json.dumps({"since": time.time()}), lease=lease)


class LocalEndpoints(Protocol):
    def pause(self, name: str, timeout: float = ...) -> float: ...
    def repoint(self, name: str, target: Endpoint | None) -> float: ...
    def resume(self, name: str) -> None: ...
    def names(self) -> list[str]: ...


@dataclass
class _Applied:
    seq: int
    phase: str  # "pausing" | "paused" | "failed" | "resumed" | "expired"
    deadline: float
    target: dict[str, Any] | None = None


class PauseFollower:
    """Applies the leader's intents to this replica's own endpoints, says so, and resumes a pause
    it applied at the intent's deadline by itself. Runs on every replica (the leader's own
    intents are applied by its operation runner and skipped here: ``term``)."""

    def __init__(self, board: PauseBoard, local: LocalEndpoints, me: str, term: Callable[[], str], ttl_s: int,
                 endpoints: list[str] | None = None):
        self.board = board
        self.local = local
        self.me = me
        self.term = term
        self.ttl_s = ttl_s
        self.watch_endpoints = [e.rstrip("/") for e in (endpoints or board.gateway.endpoints)]
        self._lock = threading.Lock()
        self._applied: dict[str, _Applied] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pause-apply")
        self._stop = threading.Event()
        self._lease: int | None = None
        self._threads: list[threading.Thread] = []
        self._watching: httpx.Client | None = None

    # --- threads ---------------------------------------------------------------------------
    def start(self) -> None:
        for fn, name in ((self._presence, "pause-presence"), (self._watch, "pause-watch"),
                         (self._guard, "pause-guard")):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self._watching is not None:
            self._watching.close()
        for t in self._threads:
            # a watch blocked in a read ends at its idle timeout; it applies nothing after stop
            t.join(timeout=0.2 if t.name == "pause-watch" else max(2.0, self.ttl_s))
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._lease is not None:
            try:
                self.board.gateway.lease_revoke(self._lease)
            except (EtcdUnreachable, EtcdError):
                pass  # it expires by itself

    def _presence(self) -> None:
        """Keep ``replicas/<me>`` alive with a lease (the leader waits only for live replicas)."""
        while not self._stop.is_set():
            try:
                if self._lease is None or self.board.gateway.lease_keepalive(self._lease) <= 0:
                    self._lease = self.board.gateway.lease_grant(self.ttl_s)
                    self.board.register(self.me, self._lease)
            except (EtcdUnreachable, EtcdError) as exc:
                log.debug("presence of %s not renewed: %s", self.me, exc)
            self._stop.wait(self.ttl_s / 3)

    def _watch(self) -> None:
        """Read every intent, then watch for changes; an idle or broken watch is re-created."""
        while not self._stop.is_set():
            try:
                intents, revision = self.board.intents()
                for name, intent in intents.items():
                    self.apply(name, intent)
                self._watch_from(revision + 1)
            except (EtcdUnreachable, EtcdError, httpx.HTTPError, ValueError) as exc:
                log.debug("pause intents not read: %s", exc)
                self._stop.wait(0.5)
            except Exception:  # noqa: BLE001 - e.g. the stream closed by stop(); never end the thread
                if not self._stop.is_set():
                    log.exception("watching the pause intents failed")
                    self._stop.wait(0.5)

    def _watch_from(self, revision: int) -> None:
        p = self.board.intents_prefix
        body = {"create_request": {"key": b64(p), "range_end": b64(prefix_end(p)), "start_revision": str(revision)}}
        errors = []
        for base in self.watch_endpoints:
            try:
                with httpx.Client(trust_env=False, timeout=httpx.Timeout(WATCH_IDLE_S, connect=1.0),
                                  verify=self.board.gateway.verify) as http:
                    self._watching = http  # closed by stop(): the stream ends at once
                    if self._stop.is_set():
                        return
                    r = http.send(http.build_request("POST", f"{base}/v3/watch", json=body), stream=True)
                    if r.status_code != 200:
                        errors.append(f"{base}: HTTP {r.status_code}")
                        continue
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result", {})
                        for ev in result.get("events", []):
                            if ev.get("type") == "DELETE":
                                continue
                            kv = ev.get("kv", {})
                            intent = Intent.loads(unb64(kv.get("value", "")))
                            if intent is not None:
                                self.apply(unb64(kv["key"])[len(p):], intent)
                return
            except httpx.ReadTimeout:
                return  # idle: read again and watch anew
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{base}: {type(exc).__name__}")
        if errors:
            raise EtcdUnreachable("; ".join(errors), ambiguous=False)

    def _guard(self) -> None:
        """No pause applied here outlives its intent's deadline."""
        while not self._stop.is_set():
            now = time.time()
            with self._lock:
                due = [(n, a.seq) for n, a in self._applied.items() if a.phase in ("pausing", "paused")
                       and now >= a.deadline]
                for n, _ in due:
                    self._applied[n].deadline = now + 1.0  # asked again in 1 s if this resume fails
            for name, seq in due:
                self._pool.submit(self._resume, name, seq, None, "the pause deadline passed")
            self._stop.wait(GUARD_POLL_S)

    # --- applying an intent --------------------------------------------------------------------
    def forget(self, name: str) -> None:
        """This replica's runner (it leads now) holds ``name`` from here on."""
        with self._lock:
            self._applied.pop(name, None)

    def applied(self, name: str) -> str | None:
        with self._lock:
            a = self._applied.get(name)
            return a.phase if a else None

    def apply(self, name: str, intent: Intent) -> None:
        if intent.by == self.term():
            return  # written by this replica's own runner, which applied it here itself
        with self._lock:
            cur = self._applied.get(name)
            if intent.phase == "pause":
                if cur is not None and cur.seq == intent.seq:
                    if intent.target != cur.target and cur.phase == "paused":
                        cur.target = intent.target
                        self._pool.submit(self._repoint, name, intent.seq, intent.target)
                    return
                if time.time() >= intent.deadline:
                    self._applied[name] = _Applied(intent.seq, "expired", intent.deadline)
                    return
                self._applied[name] = _Applied(intent.seq, "pausing", intent.deadline, intent.target)
                self._pool.submit(self._pause, name, intent)
            elif intent.phase == "resume":
                # Only a pause this replica applied is resumed (an old intent read at start, or one
                # of a move it never saw, must not repoint it: its reconciler follows the records).
                if cur is None or cur.seq != intent.seq or cur.phase in ("resumed", "expired"):
                    return
                self._pool.submit(self._resume, name, intent.seq, intent.target, "the leader resumed it")

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _ack(self, name: str, seq: int, state: str, detail: str = "") -> None:
        try:
            self.board.ack(name, self.me, seq, state, detail, lease=self._lease)
        except (EtcdUnreachable, EtcdError) as exc:
            log.warning("pause of %s: acknowledgement %s not written: %s", name, state, exc)

    def _pause(self, name: str, intent: Intent) -> None:
        self._ack(name, intent.seq, "seen")
        with self._name_lock(name):
            with self._lock:
                cur = self._applied.get(name)
                if cur is None or cur.seq != intent.seq or cur.phase != "pausing":
                    return  # resumed or superseded before it started
            left = intent.deadline - time.time()
            state, detail = "paused", ""
            try:
                if name not in self.local.names():
                    detail = "no such endpoint on this replica"
                elif left <= 0:
                    state, detail = "failed", "the pause deadline passed before PAUSE was sent"
                else:
                    took = self.local.pause(name, left)
                    detail = f"paused in {took:.3f}s"
                    if intent.target:
                        self.local.repoint(name, Endpoint(**intent.target))
            except PauseTimeout as exc:
                state, detail = "failed", str(exc)
            except (EndpointError, OSError) as exc:
                state, detail = "failed", f"{type(exc).__name__}: {exc}"
            with self._lock:
                cur = self._applied.get(name)
                if cur is not None and cur.seq == intent.seq:
                    cur.phase = state
            log.info("pause of %s (seq %d) by the leader: %s %s", name, intent.seq, state, detail)
        self._ack(name, intent.seq, state, detail)

    def _repoint(self, name: str, seq: int, target: dict[str, Any] | None) -> None:
        with self._name_lock(name):
            with self._lock:
                cur = self._applied.get(name)
                if cur is None or cur.seq != seq or cur.phase != "paused":
                    return
            try:
                self.local.repoint(name, Endpoint(**target) if target else None)
            except (EndpointError, OSError) as exc:
                log.warning("repointing %s as the leader did: %s", name, exc)

    def _resume(self, name: str, seq: int, target: dict[str, Any] | None, why: str) -> None:
        with self._name_lock(name):
            with self._lock:
                cur = self._applied.get(name)
                if cur is None or cur.seq != seq or cur.phase in ("resumed", "expired"):
                    return
                was, pointed = cur.phase, cur.target
            try:
                if name in self.local.names():
                    if target and was == "paused" and target != pointed:
                        try:
                            self.local.repoint(name, Endpoint(**target))
                        except (EndpointError, OSError) as exc:
                            log.warning("repointing %s before its resume: %s", name, exc)
                    self.local.resume(name)
            except (EndpointError, OSError) as exc:
                log.warning("resuming %s (%s): %s; tried again", name, why, exc)
                return  # still paused here: the guard tries again
            with self._lock:
                cur = self._applied.get(name)
                if cur is not None and cur.seq == seq:
                    cur.phase = "resumed"
            if why != "the leader resumed it":
                log.warning("endpoint %s resumed here: %s", name, why)
        self._ack(name, seq, "resumed", why)


class CoordinatedEndpoints:
    """The endpoints as the leader's operation runner sees them (pause, repoint, resume): its
    own, and through intents every other live replica's."""

    def __init__(self, local: Any, board: PauseBoard, follower: PauseFollower, term: Callable[[], str]):
        self.local = local
        self.board = board
        self.follower = follower
        self.term = term
        self._notes: dict[str, str] = {}

    def note(self, name: str) -> str:
        """What the last pause of ``name`` says of the other replicas (for the step's detail)."""
        return self._notes.get(name, "")

    def pause(self, name: str, timeout: float) -> float:
        t0 = time.monotonic()
        intent = Intent(seq=time.time_ns(), phase="pause", deadline=time.time() + timeout, by=self.term())
        try:
            self.board.publish(name, intent)
        except (EtcdUnreachable, EtcdError) as exc:
            raise EndpointError(f"the pause could not be announced to the other replicas: {exc}") from None
        self.follower.forget(name)
        try:
            self.local.pause(name, timeout)
        except Exception:
            self._release(name, intent)
            raise
        others, missing, failed = self._await(name, intent.seq, t0 + timeout)
        if failed:
            self.local.resume(name)
            self._release(name, intent)
            raise PauseTimeout("; ".join(f"replica {r}: {d}" for r, d in failed.items())
                               + "; every pooler was resumed")
        self._notes[name] = ", ".join(
            ([f"{len(others)} other replica(s) paused ({', '.join(sorted(others))})"] if others else [])
            + ([f"not paused on {', '.join(sorted(missing))} (did not see the pause within {SEEN_BOUND_S:g}s: "
                "its pooled clients may get errors during the move)"] if missing else []))
        return time.monotonic() - t0

    def _await(self, name: str, seq: int, until: float) -> tuple[set[str], set[str], dict[str, str]]:
        """Wait for every other live replica's PAUSE; returns (paused, never saw it, failed)."""
        me = self.follower.me
        try:
            live = self.board.live_replicas() - {me}
        except (EtcdUnreachable, EtcdError) as exc:
            log.warning("pause of %s: the live replicas could not be read (%s): not waited for", name, exc)
            return set(), set(), {}
        seen_by = time.monotonic() + SEEN_BOUND_S
        acks: dict[str, Ack] = {}
        while live:
            try:
                acks = {r: a for r, a in self.board.acks(name).items() if a.seq == seq and r in live}
            except (EtcdUnreachable, EtcdError) as exc:
                log.debug("reading pause acknowledgements: %s", exc)
            failed = {r: a.detail for r, a in acks.items() if a.state == "failed"}
            if failed:
                return set(), set(), failed
            pending = {r for r in live if r not in acks or acks[r].state == "seen"}
            if not pending:
                break
            now = time.monotonic()
            unseen = {r for r in pending if r not in acks}
            if now >= until:
                slow = pending - unseen
                if slow:
                    return set(), set(), {r: "its PAUSE did not complete within the pause window" for r in slow}
                break
            if now >= seen_by and pending == unseen:
                break
            time.sleep(ACK_POLL_S)
        paused = {r for r, a in acks.items() if a.state == "paused"}
        return paused, live - set(acks), {}

    def _release(self, name: str, intent: Intent) -> None:
        try:
            self.board.publish(name, Intent(seq=intent.seq, phase="resume", deadline=intent.deadline,
                                            by=intent.by, target=intent.target))
        except (EtcdUnreachable, EtcdError, StoreFenced) as exc:
            log.warning("the resume of %s could not be announced (%s): every replica resumes at the deadline",
                        name, exc)

    def _current(self, name: str) -> Intent | None:
        try:
            intent = self.board.intent(name)
        except (EtcdUnreachable, EtcdError):
            return None
        return intent if intent is not None and intent.phase == "pause" else None

    def repoint(self, name: str, target: Endpoint | None) -> float:
        took = self.local.repoint(name, target)
        intent = self._current(name)
        if intent is not None and target is not None:
            try:
                self.board.publish(name, Intent(seq=intent.seq, phase="pause", deadline=intent.deadline,
                                                by=self.term(), target=target.model_dump()))
            except (EtcdUnreachable, EtcdError) as exc:
                log.warning("the new target of %s could not be announced (%s): the other replicas repoint "
                            "after the move", name, exc)
        return float(took or 0.0)

    def resume(self, name: str) -> None:
        self.follower.forget(name)
        self.local.resume(name)
        intent = self._current(name)
        if intent is not None:
            self._release(name, intent)
