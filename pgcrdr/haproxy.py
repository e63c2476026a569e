"""HAProxy's runtime API (its stats socket), shared by the region agents (a cluster's writer and
replica endpoints) and the control plane's Service URI endpoints."""

from __future__ import annotations

import socket
from pathlib import Path


def haproxy_command(sock_path: Path, command: str, timeout: float = 5.0) -> str:
    """Send one line (commands may be joined with ';') to HAProxy's stats socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")



def runtime_rows(output: str, sep: str | None = None) -> list[dict[str, str]]:
    """The rows of a runtime API table (``show stat``: CSV, ``sep=","``; ``show servers state``:
    whitespace) as {column: value}, the columns named by its ``# name name ...`` header line;
    lines before the header (a version) are skipped; [] without a header. Pure."""
    header: list[str] | None = None
    rows = []
    for ln in output.splitlines():
        if not ln.strip():
            continue
        if ln.startswith("#"):
            header = [h.strip() for h in ln.lstrip("# ").split(sep)]
        elif header is not None:
            values = ln.split(sep)
            if len(values) >= len([h for h in header if h]):
                rows.append(dict(zip(header, values, strict=False)))
    return rows


def server_sessions(stat_csv: str, backend: str, server: str) -> int | None:
    """The current sessions (``scur``) of ``backend/server`` in the output of ``show stat``;
    None when it is not listed. Pure."""
    for row in runtime_rows(stat_csv, ","):
        if row.get("pxname") == backend and row.get("svname") == server:
            cur = row.get("scur") or "0"
            return int(cur) if cur.isdigit() else None
    return None
