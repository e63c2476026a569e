"""Talking to running endpoint processes: HAProxy's runtime API and PgBouncer's admin console."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import psycopg
from psycopg import pq

from pgcrdr.endpoint.models import EndpointError, PauseTimeout


def resolve_ip(host: str) -> str:
    """HAProxy's runtime API takes an address, not a name."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise EndpointError(f"cannot resolve target host {host!r}: {exc}") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # prefer IPv4, like the config's libc lookup
    return str(infos[0][4][0])


class PgBouncerAdmin:
    """The admin console (database ``pgbouncer``) over the endpoint's Unix socket.

    Keeps one connection open (a SCRAM login costs ~6 ms, three times the RELOAD itself) and
    opens a new one when it broke. Not thread-safe: the manager serializes per endpoint.
    Admin commands are sent with the simple query protocol (the console knows no other)."""

    def __init__(self, socket_dir: Path, port: int, user: str, password: str):
        self.conninfo = psycopg.conninfo.make_conninfo(
            host=str(socket_dir), port=port, user=user, password=password, dbname="pgbouncer",
            sslmode="disable", connect_timeout=5)
        self._conn: psycopg.Connection | None = None

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def _connection(self) -> psycopg.Connection:
        c = self._conn
        if c is None or c.closed or c.pgconn.status != pq.ConnStatus.OK:
            self.close()
            c = self._conn = self.connect()
        return c

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def command(self, sql: str) -> list[dict[str, str | None]]:
        """Run one admin command; retried once on a fresh connection if the kept one broke
        (PgBouncer restarted) before the command reached it."""
        for attempt in (1, 2):
            conn = self._connection()
            res = conn.pgconn.exec_(sql.encode())
            if attempt == 1 and conn.pgconn.status != pq.ConnStatus.OK:
                self.close()
                continue
            return _rows(res, sql)
        raise AssertionError("unreachable")

    def pause(self, timeout: float) -> float:
        """PAUSE: wait for every server connection to be released (in transaction mode: every
        in-flight transaction to end), then hold new queries. Seconds taken. On timeout, RESUME
        and raise PauseTimeout."""
        t0 = time.monotonic()
        self.command("SHOW VERSION")  # a live connection before PAUSE is sent
        assert self._conn is not None
        pg = self._conn.pgconn
        try:
            pg.send_query(b"PAUSE")
            deadline = t0 + timeout
            while True:
                pg.consume_input()
                if not pg.is_busy():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                select.select([pg.socket], [], [], min(left, 0.5))
            if pg.is_busy():
                # Undo from another connection; the pending PAUSE goes with its connection.
                self.close()
                with self.connect() as other:
                    self._run(other, "RESUME")
                raise PauseTimeout(
                    f"PAUSE did not complete within {timeout:g}s (a transaction stayed open, or a "
                    "server connection is stuck); the pooler was resumed")
            res = pg.get_result()
            while pg.get_result() is not None:
                pass
            _rows(res, "PAUSE")
            return time.monotonic() - t0
        except (psycopg.Error, OSError):
            self.close()
            raise

    @staticmethod
    def _run(conn: psycopg.Connection, sql: str) -> list[dict[str, str | None]]:
        return _rows(conn.pgconn.exec_(sql.encode()), sql)


def _rows(res: pq.abc.PGresult | None, sql: str) -> list[dict[str, str | None]]:
    if res is None:
        raise EndpointError(f"PgBouncer gave no answer to {sql}")
    if res.status == pq.ExecStatus.FATAL_ERROR:
        msg = (res.error_message or b"").decode(errors="replace").strip()
        raise EndpointError(f"PgBouncer refused {sql}: {msg}")
    if res.status != pq.ExecStatus.TUPLES_OK:
        return []
    names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
    out = []
    for r in range(res.ntuples):
        row = {}
        for c, n in enumerate(names):
            v = res.get_value(r, c)
            row[n] = v.decode(errors="replace") if v is not None else None
        out.append(row)
    return out
