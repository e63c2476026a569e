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
