"""A small client of etcd v3 over its JSON gateway (``POST /v3/kv/range``, ``/v3/kv/txn``), with
failover between the members of a cluster. See docs/decisions.md for why not a gRPC library.

Requests go to the member that answered last; a member that cannot be reached is skipped for
the next one. A request that may have reached a member without an answer coming back is only
sent again when it cannot have written anything (a read, or a write the member refused before
proposing it): whether such a write was applied is unknown (``EtcdUnreachable.ambiguous``), and
finding out is the caller's job (``EtcdStore`` settles it with its commit marker).
"""

from __future__ import annotations

import base64
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# gRPC status codes etcd answers with (in the gateway's JSON ``code``).
GRPC_UNAVAILABLE = 14
GRPC_OUT_OF_RANGE = 11  # "mvcc: required revision has been compacted"
# Errors that etcd gives before proposing a request to raft: nothing was written, another
# member may take it.
NOT_PROPOSED = ("etcdserver: no leader", "etcdserver: not capable", "etcdserver: too many requests")
READ_TIMEOUT_S = 7.0  # etcd's own request timeout is 5 s (+ the election timeout): it answers first
CONNECT_TIMEOUT_S = 1.0


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with ``prefix`` (its last byte plus one)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class StoreTLS:
    """How a client of the global etcd proves itself and checks the members: the deployment's CA
    and a client certificate it signed (``pgcrdr secrets``: ``store-client.crt``/``.key`` in the
    control host's secrets and in each region's bundle)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def context(self) -> ssl.SSLContext:
        """An SSL context that verifies members against the CA and presents the client certificate;
        a missing or unreadable file is a ``StoreTLSError`` that names it."""
        for what, path in (("the deployment CA", self.ca_file), ("the store client certificate", self.cert_file),
                           ("the store client key", self.key_file)):
            if not path.is_file():
                raise StoreTLSError(f"{what} {path} is missing: make the secrets with `pgcrdr secrets --topology "
                                    "FILE --out DIR` and copy this host's bundle")
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (ssl.SSLError, OSError) as exc:
            raise StoreTLSError(f"the store's TLS files in {self.cert_file.parent} cannot be used: {exc}") from None
        return ctx


class StoreTLSError(ValueError):
    """The TLS files for the global etcd are missing or unusable (the message names the file)."""


class EtcdError(Exception):
    """etcd answered with an error (``message`` is etcd's own, e.g. a compacted revision)."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.code = code


class EtcdUnreachable(Exception):
    """No member answered; ``ambiguous``: a write may have been applied by one that did not answer."""

    def __init__(self, message: str, ambiguous: bool):
        super().__init__(message)
        self.ambiguous = ambiguous


def kvs_of(answer: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(unb64(kv["key"]), unb64(kv.get("value", "")), int(kv.get("create_revision", 0)),
                     int(kv.get("mod_revision", 0))) for kv in answer.get("kvs", [])]


class EtcdGateway:
    def __init__(self, endpoints: list[str], timeout: float = READ_TIMEOUT_S, tls: StoreTLS | None = None):
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.tls = tls
        # https members are verified against the deployment's CA, with our client certificate
        self.verify: ssl.SSLContext | bool = tls.context() if tls is not None else True
        self._preferred = 0
        self._lock = threading.Lock()
        # No keep-alive: a pooled connection to a member that died would fail on reuse, and a
        # write sent on it could not be told from one the member received.
        self._http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False,
                                  timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S), verify=self.verify)

    def close(self) -> None:
        self._http.close()

    def call(self, path: str, body: dict[str, Any], writes: bool) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` of the first member that answers."""
        with self._lock:
            first = self._preferred
        problems: list[str] = []
        ambiguous = False
        for i in range(len(self.endpoints)):
            index = (first + i) % len(self.endpoints)
            url = f"{self.endpoints[index]}/v3/{path}"
            try:
                r = self._http.post(url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problems.append(f"{self.endpoints[index]}: cannot connect ({type(exc).__name__}: {str(exc)[:160]})")
                continue
            except httpx.TransportError as exc:
                problems.append(f"{self.endpoints[index]}: no answer ({type(exc).__name__}: {str(exc)[:160]})")
                if writes:
                    ambiguous = True
                    break
                continue
            answer = _json(r)
            if r.status_code == 200:
                with self._lock:
                    self._preferred = index
                return answer
            message, code = str(answer.get("error") or answer.get("message") or r.text[:200]), answer.get("code")
            if code == GRPC_UNAVAILABLE or any(m in message for m in NOT_PROPOSED):
                problems.append(f"{self.endpoints[index]}: {message}")
                if writes and not any(m in message for m in NOT_PROPOSED):
                    ambiguous = True  # e.g. "request timed out": proposed, maybe applied later
                    break
                continue
            raise EtcdError(message, code)
        raise EtcdUnreachable("; ".join(problems), ambiguous)

    def range(self, key: str, range_end: str | None = None, revision: int | None = None,
              limit: int = 0) -> tuple[list[KeyValue], int, bool]:
        """The keys in [key, range_end) (or ``key`` alone), as of ``revision`` (None: now);
        returns them, the revision they were read at, and whether ``limit`` cut them short."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision is not None:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        answer = self.call("kv/range", body, writes=False)
        return kvs_of(answer), int(answer["header"]["revision"]), bool(answer.get("more"))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> tuple[bool, int]:
        """Apply ``success`` if every ``compare`` holds, else ``failure``; returns whether they
        held and the revision."""
        answer = self.call("kv/txn", {"compare": compare, "success": success, "failure": failure or []},
                           writes=bool(success or failure))
        return bool(answer.get("succeeded")), int(answer["header"]["revision"])


    # --- leases (a leader key, a writer's lease) ------------------------------------------------
    def lease_grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; keys put with it go when it expires or is revoked."""
        answer = self.call("lease/grant", {"TTL": str(ttl_s)}, writes=True)
        if answer.get("error"):
            raise EtcdError(str(answer["error"]), None)
        return int(answer["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its new TTL in seconds, 0 when it has expired already (its
        keys are gone: a new lease is needed). The gateway answers the stream's one message as
        a JSON line (as Patroni reads it)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)}, writes=True)
        result = answer.get("result", answer)
        return int(result.get("TTL", 0) or 0)

    def lease_revoke(self, lease: int) -> None:
        """End ``lease`` now (its keys are deleted); an unknown or expired lease is not an error."""
        try:
            self.call("lease/revoke", {"ID": str(lease)}, writes=True)
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Put ``key`` (bound to ``lease`` when given); returns the revision."""
        op: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease is not None:
            op["lease"] = str(lease)
        return self.txn([], [{"request_put": op}])[1]


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        out = r.json()
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
