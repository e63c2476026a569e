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


def server_sessions(stat_csv: str, backend: str, server: str) -> int | None:
    """The current sessions (``scur``) of ``backend/server`` in the output of ``show stat``
    (a ``# pxname,svname,...`` header, then one CSV row per frontend, server and backend);
    None when it is not listed. Pure."""
    lines = [ln for ln in stat_csv.splitlines() if ln.strip()]
    header = next((ln.lstrip("# ").split(",") for ln in lines if ln.startswith("#")), None)
    if not header or not {"pxname", "svname", "scur"} <= set(header):
        return None
    px, sv, cur = header.index("pxname"), header.index("svname"), header.index("scur")
    for ln in lines:
        row = ln.split(",")
        if not ln.startswith("#") and len(row) > max(px, sv, cur) and row[px] == backend and row[sv] == server:
            return int(row[cur] or 0)
    return None
