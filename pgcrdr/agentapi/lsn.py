"""WAL positions as they travel between the agent and the control plane: PostgreSQL's text
form (``"0/3000148"``), compared and subtracted as integers."""

from __future__ import annotations

import re

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """``"0/3000148"`` -> 50331976. Raises ValueError on anything else."""
    m = _LSN.match(text.strip())
    if not m:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
