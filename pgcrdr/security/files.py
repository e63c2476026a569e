"""Writing files that hold secrets (passwords, tokens, private keys).

A secret is never visible with a wider mode, nor half-written: a new file is created with its
final mode (0600 by default) before anything is written to it, written, fsynced, renamed over
the old one, and the directory is fsynced. A reader sees the old content or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, content: str | bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; a stale tmp kept its own
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
