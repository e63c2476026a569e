"""The store in etcd v3: for a control plane on several hosts, on a global etcd cluster (one
member per region plus a witness) that survives the loss of any one of them.

Keys live under a prefix (default ``/pgcrdr/v1/``), one JSON document each::

    meta/<key>                          services/<project>/<name>
    projects/<name>                     integrations/<project>/<integration id>
    tokens/<sha-256 of the token>       operations/<project>/<pair>/<operation id>
    operation-ids/<operation id>        -> {"project", "pair"} of the operation's key
    drills/<project>/<pair>/<drill id>  a drill's record and report (pgcrdr drill)
    running-operations/<project>/<pair>/<operation id>   a copy of each running operation
    events/<project>/<10**19-1 - seq>   newest first in key order; event-seq/<project> holds seq
    deletions/<kind>                    changed by every delete of a key of that kind

    commits/<store id>/<thread>         the commit marker of one thread of one store (below)

(path parts are percent-encoded). Transactions are optimistic: a transaction function reads
one snapshot (every read is at the revision of the first), its writes are buffered, and the
commit is one etcd ``Txn`` that applies them only if nothing it read changed since: every key
read keeps its ``mod_revision`` (an absent key: ``create_revision == 0``), every range read has
no key modified after the snapshot, and no key of a kind it listed was deleted (``deletions/``).
Otherwise the whole function runs again on a new snapshot, at most ``attempts`` times.

Every commit also writes a new value to its thread's commit marker, on the condition that the
marker is as this thread last left it. When a commit's answer is lost (a member died with the
request, or answered "request timed out"), one more ``Txn`` settles it: the marker holds this
commit's value (it was applied), or the marker is changed (it was not, and now never will be:
a late arrival fails its condition), and the function runs again.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

from pgcrdr.controlplane.records import (
    DrillRecord,
    IntegrationRecord,
    OperationRecord,
    ProjectRecord,
    ServiceRecord,
)
from pgcrdr.controlplane.store.base import (
    EVENTS_KEPT_PER_PROJECT,
    EventRow,
    Store,
    StoreConflict,
    StoreError,
    StoreFenced,
    StoreUnavailable,
    T,
    TokenRow,
    Tx,
    prune_every,
    rfc3339,
)
from pgcrdr.etcdv3 import (
    GRPC_OUT_OF_RANGE,
    EtcdError,
    EtcdGateway,
    EtcdUnreachable,
    StoreTLS,
    StoreTLSError,
    b64,
    prefix_end,
)

DEFAULT_PREFIX = "/pgcrdr/v1/"
TX_ATTEMPTS = 20  # runs of one transaction function before it fails with StoreConflict
MAX_EVENT_SEQ = 10**19 - 1
EVENT_PAGE = 256
NOT_YET_CREATED = float("inf")  # the creation order of a key this transaction writes first
SETTLE_FOR_S = 15.0  # how long a commit whose answer was lost is asked about (a leader election)

# A leader's store: (the leader key, the revision it had when this replica won), None when the
# replica does not lead (pgcrdr.controlplane.leader.LeaderElection.fence).
Fence = Callable[[], tuple[str, int] | None]
NOT_LEADING = "this control-plane replica no longer leads: its write was not made (the leader makes it)"


class _Compacted(Exception):
    """The snapshot's revision was compacted away while the transaction read it: start again."""


class CommitMarker:
    """A key only one thread of one store writes, with every commit of that thread."""

    def __init__(self, key: str):
        self.key = key
        self.mod_revision: int | None = None  # as this thread last left it; None: read it first


def _unchanged(key: str, mod_revision: int) -> dict[str, Any]:
    """The compare: ``key`` has this ``mod_revision`` (0: ``key`` does not exist)."""
    if mod_revision:
        return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def _put_op(key: str, value: str) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


class EtcdTx(Tx):
    def __init__(self, gateway: EtcdGateway, prefix: str, marker: CommitMarker, fence: Fence | None = None):
        self._gw = gateway
        self._fence = fence
        self._prefix = prefix
        self._marker = marker
        self._revision: int | None = None  # the snapshot: the revision of the first read
        self._seen: dict[str, int] = {}  # key read -> its mod_revision then (0: absent)
        self._values: dict[str, str | None] = {}  # key read -> its value then
        self._ranges: set[tuple[str, str]] = set()  # ranges read
        self._writes: dict[str, str | None] = {}  # key -> new value (None: delete)
        self._pruned: list[tuple[str, str]] = []  # ranges to delete (old events)

    # keys ----------------------------------------------------------------------------------
    def _key(self, kind: str, *parts: str) -> str:
        return "/".join([self._prefix + kind, *(quote(p, safe="") for p in parts)])

    def _dir(self, kind: str, *parts: str) -> str:
        return self._key(kind, *parts) + "/"

    # reads ---------------------------------------------------------------------------------
    def _range(self, key: str, range_end: str | None = None, limit: int = 0) -> tuple[list, bool]:
        try:
            kvs, revision, more = self._gw.range(key, range_end, revision=self._revision, limit=limit)
        except EtcdError as exc:
            if exc.code == GRPC_OUT_OF_RANGE:
                raise _Compacted(str(exc)) from None
            raise
        if self._revision is None:
            self._revision = revision
        return kvs, more

    def _observe(self, key: str) -> str | None:
        """``key`` as of the snapshot, kept in the read set."""
        if key not in self._seen:
            kvs, _ = self._range(key)
            self._seen[key] = kvs[0].mod_revision if kvs else 0
            self._values[key] = kvs[0].value if kvs else None
        return self._values[key]

    def _get(self, key: str) -> str | None:
        if key in self._writes:
            return self._writes[key]
        return self._observe(key)

    def _scan(self, kind: str, *parts: str) -> list[tuple[str, float]]:
        """Values of every key under ``kind/parts/``, this transaction's writes included, in the
        order the keys were created."""
        directory = self._dir(kind, *parts)
        end = prefix_end(directory)
        kvs, _ = self._range(directory, end)
        self._ranges.add((directory, end))
        self._observe(self._key("deletions", kind))
        found: dict[str, tuple[str, float]] = {kv.key: (kv.value, kv.create_revision) for kv in kvs}
        for key, value in self._writes.items():
            if directory <= key < end:
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = (value, found.get(key, ("", NOT_YET_CREATED))[1])
        return sorted(found.values(), key=lambda item: item[1])

    def _doc(self, key: str) -> dict[str, Any] | None:
        value = self._get(key)
        return json.loads(value) if value is not None else None

    # writes --------------------------------------------------------------------------------
    def _put(self, key: str, value: str) -> None:
        self._writes[key] = value

    def _delete(self, kind: str, *parts: str) -> None:
        self._writes[self._key(kind, *parts)] = None
        self._writes[self._key("deletions", kind)] = uuid.uuid4().hex  # any change will do

    def commit(self) -> bool:
        """Apply the writes if nothing read changed since the snapshot; False: something did."""
        if not self._writes and not self._pruned:
            return True
        marker = self._marker
        if marker.mod_revision is None:
            kvs, _, _ = self._gw.range(marker.key)
            marker.mod_revision = kvs[0].mod_revision if kvs else 0
        compare = [_unchanged(key, mod_revision) for key, mod_revision in self._seen.items()]
        compare += [{"key": b64(start), "range_end": b64(end), "target": "MOD", "result": "LESS",
                     "mod_revision": (self._revision or 0) + 1} for start, end in sorted(self._ranges)]
        compare.append(_unchanged(marker.key, marker.mod_revision))
        guard = self._guard()
        if guard is not None:
            compare.append(_unchanged(*guard))  # fencing: applied only while this replica leads
        success = [_put_op(key, value) if value is not None else {"request_delete_range": {"key": b64(key)}}
                   for key, value in self._writes.items()]
        success += [{"request_delete_range": {"key": b64(start), "range_end": b64(end)}} for start, end in self._pruned]
        this_commit = uuid.uuid4().hex
        success.append(_put_op(marker.key, this_commit))
        marker.mod_revision = None  # unless the commit is known to be applied, below
        try:
            succeeded, revision = self._gw.txn(compare, success)
        except EtcdUnreachable as exc:
            if not exc.ambiguous:
                raise
            return self._settle(this_commit, exc)
        if succeeded:
            marker.mod_revision = revision
        elif guard is not None:
            kvs, _, _ = self._gw.range(guard[0])
            if not kvs or kvs[0].mod_revision != guard[1]:
                raise StoreFenced(NOT_LEADING)
        return succeeded

    def _guard(self) -> tuple[str, int] | None:
        """The leader key's compare of a leader's store (None: the store is not a leader's)."""
        if self._fence is None:
            return None
        guard = self._fence()
        if guard is None:
            raise StoreFenced(NOT_LEADING)
        return guard

    def _settle(self, this_commit: str, lost: EtcdUnreachable) -> bool:
        """Whether the commit whose answer was ``lost`` was applied; if it was not, it never will be."""
        key = self._marker.key
        deadline = time.monotonic() + SETTLE_FOR_S
        while True:
            try:
                applied, _ = self._gw.txn(
                    [{"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(this_commit)}],
                    [], [_put_op(key, uuid.uuid4().hex)])
                return applied
            except EtcdUnreachable as exc:
                # asking again is harmless: a marker changed twice is as good as once
                if time.monotonic() > deadline:
                    raise EtcdUnreachable(f"{lost}; then, asked whether it was applied: {exc}", ambiguous=True) \
                        from None
            time.sleep(0.2)

    @property
    def wrote(self) -> bool:
        return bool(self._writes or self._pruned)

    # services ------------------------------------------------------------------------------
    def service(self, project: str, name: str) -> ServiceRecord | None:
        value = self._get(self._key("services", project, name))
        return ServiceRecord.model_validate_json(value) if value is not None else None

    def services(self, project: str | None = None) -> list[ServiceRecord]:
        found = self._scan("services") if project is None else self._scan("services", project)
        return sorted((ServiceRecord.model_validate_json(v) for v, _ in found), key=lambda s: (s.project, s.name))

    def put_service(self, svc: ServiceRecord) -> None:
        self._put(self._key("services", svc.project, svc.name), svc.model_dump_json())

    def delete_service(self, project: str, name: str) -> None:
        self._delete("services", project, name)

    # projects ------------------------------------------------------------------------------
    def project(self, name: str) -> ProjectRecord | None:
        value = self._get(self._key("projects", name))
        return ProjectRecord.model_validate_json(value) if value is not None else None

    def projects(self) -> list[ProjectRecord]:
        return sorted((ProjectRecord.model_validate_json(v) for v, _ in self._scan("projects")), key=lambda p: p.name)

    def put_project(self, project: ProjectRecord) -> None:
        self._put(self._key("projects", project.name), project.model_dump_json())

    # integrations --------------------------------------------------------------------------
    def integrations(self, project: str) -> list[IntegrationRecord]:
        return [IntegrationRecord.model_validate_json(v) for v, _ in self._scan("integrations", project)]

    def put_integration(self, rec: IntegrationRecord) -> None:
        self._put(self._key("integrations", rec.project, rec.integration_id), rec.model_dump_json())

    def delete_integration(self, project: str, integration_id: str) -> None:
        self._delete("integrations", project, integration_id)

    # operations ----------------------------------------------------------------------------
    def operation(self, operation_id: str) -> OperationRecord | None:
        where = self._doc(self._key("operation-ids", operation_id))
        if where is None:
            return None
        value = self._get(self._key("operations", where["project"], where["pair"], operation_id))
        return OperationRecord.model_validate_json(value) if value is not None else None

    @staticmethod
    def _oldest_first(found: list[tuple[str, float]]) -> list[OperationRecord]:
        ops = [(OperationRecord.model_validate_json(v), order) for v, order in found]
        return [op for op, _ in sorted(ops, key=lambda item: (item[0].create_time, item[1]))]

    def operations(self, project: str, pair: str | None = None) -> list[OperationRecord]:
        parts = (project,) if pair is None else (project, pair)
        return self._oldest_first(self._scan("operations", *parts))

    def running_operation(self, project: str, pair: str) -> OperationRecord | None:
        return next(iter(self._oldest_first(self._scan("running-operations", project, pair))), None)

    def running_operations(self) -> list[OperationRecord]:
        return self._oldest_first(self._scan("running-operations"))

    def write_operation(self, op: OperationRecord) -> None:
        doc = op.model_dump_json()
        self._put(self._key("operations", op.project, op.pair, op.operation_id), doc)
        index = self._key("operation-ids", op.operation_id)
        if self._get(index) is None:
            self._put(index, json.dumps({"project": op.project, "pair": op.pair}))
        # The running ones are also kept apart: the reconciler asks for them several times a tick.
        running = self._key("running-operations", op.project, op.pair, op.operation_id)
        if op.state == "running":
            self._put(running, doc)
        elif self._get(running) is not None:
            self._delete("running-operations", op.project, op.pair, op.operation_id)

    # drills --------------------------------------------------------------------------------
    def drills(self, project: str, pair: str) -> list[DrillRecord]:
        found = [(DrillRecord.model_validate_json(v), order) for v, order in self._scan("drills", project, pair)]
        return [d for d, _ in sorted(found, key=lambda item: (item[0].create_time, item[1]))]

    def put_drill(self, rec: DrillRecord) -> None:
        self._put(self._key("drills", rec.project, rec.pair, rec.drill_id), rec.model_dump_json())

    # events --------------------------------------------------------------------------------
    def _event_key(self, project: str, seq: int) -> str:
        return self._dir("events", project) + f"{MAX_EVENT_SEQ - seq:019d}"

    def add_event(self, project: str, actor: str, event_type: str, event_desc: str,
                  service_name: str | None = None, when: str | None = None,
                  keep: int = EVENTS_KEPT_PER_PROJECT) -> None:
        # Ids count the project's events: concurrent writers of one project's log conflict on
        # this counter, and one of them runs again.
        counter = self._key("event-seq", project)
        seq = int(self._get(counter) or 0) + 1
        self._put(counter, str(seq))
        self._put(self._event_key(project, seq), json.dumps({
            "time": when or rfc3339(time.time()), "actor": actor, "event_type": event_type,
            "service_name": service_name, "event_desc": event_desc}))
        if seq % prune_every(keep) == 0 and seq > keep:
            # older events have greater keys: from the newest one to drop to the end of the log
            self._pruned.append((self._event_key(project, seq - keep), prefix_end(self._dir("events", project))))

    def events(self, project: str, limit: int, service_name: str | None = None) -> list[EventRow]:
        """Newest first, as committed (not this transaction's own new events)."""
        directory = self._dir("events", project)
        end = prefix_end(directory)
        self._ranges.add((directory, end))
        out: list[EventRow] = []
        start = directory
        while len(out) < limit:
            kvs, more = self._range(start, end, limit=limit if service_name is None else max(limit, EVENT_PAGE))
            for kv in kvs:
                doc = json.loads(kv.value)
                if service_name is None or doc["service_name"] == service_name:
                    out.append(EventRow(id=MAX_EVENT_SEQ - int(kv.key[len(directory):]), project=project, **doc))
            if not more or not kvs:
                break
            start = kvs[-1].key + "\0"
        return out[:limit]

    # tokens --------------------------------------------------------------------------------
    def token(self, token_hash: str) -> TokenRow | None:
        doc = self._doc(self._key("tokens", token_hash))
        return TokenRow(**doc) if doc is not None else None

    def tokens(self) -> list[TokenRow]:
        rows = [(TokenRow(**json.loads(v)), order) for v, order in self._scan("tokens")]
        return [row for row, _ in sorted(rows, key=lambda item: (item[0].create_time, item[1]))]

    def tokens_with_prefix(self, prefix: str) -> list[TokenRow]:
        return [row for row in self.tokens() if row.token_prefix == prefix]

    def put_token(self, row: TokenRow) -> None:
        self._put(self._key("tokens", row.token_hash), json.dumps(asdict(row)))

    def delete_token(self, token_hash: str) -> None:
        self._delete("tokens", token_hash)

    # meta ----------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        return self._get(self._key("meta", key))

    def put_meta(self, key: str, value: str) -> None:
        self._put(self._key("meta", key), value)


class EtcdStore(Store):
    """The store on an etcd v3 cluster, reached at any of ``endpoints`` (``http://host:port``)."""

    def __init__(self, endpoints: list[str], prefix: str = DEFAULT_PREFIX, attempts: int = TX_ATTEMPTS,
                 fence: Fence | None = None, tls: StoreTLS | None = None):
        """``fence``: this store is a leader's; every commit is made only while it leads."""
        super().__init__()
        self.fence = fence
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"the etcd key prefix must start and end with '/', not {prefix!r}")
        self.prefix = prefix
        self.attempts = attempts
        self._id = uuid.uuid4().hex
        self._markers = threading.local()
        try:
            self._gw = EtcdGateway(endpoints, tls=tls)
        except StoreTLSError as exc:
            raise StoreUnavailable(str(exc)) from None
        try:
            self._gw.range(prefix + "meta/")  # fail at once, and clearly, when no member answers
        except EtcdUnreachable as exc:
            self._gw.close()
            raise StoreUnavailable(f"the etcd store answers at none of its endpoints: {exc}") from None

    def close(self) -> None:
        markers = f"{self.prefix}commits/{self._id}/"
        try:  # this store's commit markers end with it (one per thread that wrote)
            self._gw.txn([], [{"request_delete_range": {"key": b64(markers), "range_end": b64(prefix_end(markers))}}])
        except (EtcdUnreachable, EtcdError):
            pass  # left behind: a few small keys, harmless
        self._gw.close()

    def _marker(self) -> CommitMarker:
        marker = getattr(self._markers, "marker", None)
        if marker is None:
            marker = self._markers.marker = CommitMarker(f"{self.prefix}commits/{self._id}/{threading.get_ident()}")
        return marker

    def transaction(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn, writable=True)

    def read(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn, writable=False)

    def _run(self, fn: Callable[[Tx], T], writable: bool) -> T:
        for attempt in range(self.attempts):
            tx = EtcdTx(self._gw, self.prefix, self._marker(), self.fence)
            try:
                out = fn(tx)
                if not writable and tx.wrote:
                    raise TypeError("a read-only store call wrote; use Store.transaction")
                if tx.commit():
                    return out
            except _Compacted:
                pass
            except EtcdUnreachable as exc:
                if exc.ambiguous:
                    raise StoreUnavailable(f"the etcd store did not answer a write, which may or may not have "
                                           f"been applied: {exc}") from None
                raise StoreUnavailable(f"the etcd store answers at none of its endpoints: {exc}") from None
            except EtcdError as exc:
                raise StoreError(f"etcd refused a store request: {exc}") from None
            # Someone else's write came first: back off a little, more after each try.
            time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        raise StoreConflict(f"a store transaction met concurrent changes to what it read {self.attempts} times in "
                            "a row and gave up; nothing of it was written, the request may be repeated")
