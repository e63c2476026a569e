"""The drill's write load: one client inserting unique ids through the Service URI, each
attempt logged as acknowledged, failed (certainly not written) or unknown (the connection broke
while the commit may have been in flight), with the time of every acknowledgement."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

TABLE = "pgcrdr_drill_writes"


@dataclass
class WriteLog:
    ok: list[str] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)  # monotonic, one per ``ok``
    failed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    last_error: str | None = None

    def longest_gap(self) -> float:
        """The longest time between two acknowledged writes (s)."""
        t = sorted(self.ok_times)
        return max((b - a for a, b in itertools.pairwise(t)), default=0.0)


def prepare_table(uri: str) -> None:
    with psycopg.connect(uri, connect_timeout=10, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, at timestamptz DEFAULT now())")


def drop_table(uri: str) -> None:
    with psycopg.connect(uri, connect_timeout=10, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def stored_ids(uri: str) -> set[str]:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {TABLE}")}


class AckWriter(threading.Thread):
    """Writes unique ids into ``table`` through ``uri`` in a loop, logging each attempt's outcome
    (the acknowledged-writes checker; the tests use it too). ``connect_kw``: psycopg's, e.g.
    ``tcp_user_timeout`` or ``prepare_threshold=None`` behind a transaction pooler."""

    def __init__(self, uri: str, table: str = TABLE, interval: float = 0.02, **connect_kw: Any):
        super().__init__(daemon=True, name="ack-writer")
        self.uri, self.table, self.interval = uri, table, interval
        self.connect_kw = connect_kw
        self.log = WriteLog()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def acked(self) -> int:
        return len(self.log.ok)

    def acked_after(self, t: float) -> float | None:
        """Monotonic time of the first acknowledgement after ``t``, if any yet."""
        with self._lock:
            times = list(self.log.ok_times)
        return next((x for x in times if x > t), None)

    def stop(self) -> WriteLog:
        self._halt.set()
        self.join(timeout=30)
        return self.log

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._halt.is_set():
            wid = uuid.uuid4().hex
            if conn is None or conn.closed:
                try:
                    conn = psycopg.connect(self.uri, connect_timeout=3, autocommit=True, **self.connect_kw)
                except psycopg.Error as exc:
                    self.log.failed.append(wid)
                    self.log.last_error = f"connect: {exc}"
                    self._halt.wait(0.2)
                    continue
            try:
                conn.execute(f"INSERT INTO {self.table}(id) VALUES (%s)", (wid,))
                with self._lock:
                    self.log.ok.append(wid)
                    self.log.ok_times.append(time.monotonic())
            except psycopg.OperationalError as exc:
                # the connection broke while the commit may have been in flight
                self.log.unknown.append(wid)
                self.log.last_error = f"in flight: {exc}"
                try:
                    conn.close()
                except psycopg.Error:
                    pass
                conn = None
            except psycopg.Error as exc:
                self.log.failed.append(wid)
                self.log.last_error = f"refused: {exc}"
            self._halt.wait(self.interval)
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
