"""WAL positions read from disk: ``pg_controldata`` and ``pg_waldump`` of a (stopped) data directory.

These work without a running server, so the agent can say what a fenced or crashed writer held.
The parsing is pure (tests/unit/test_agent_crdr.py); the runners only call the binaries.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pgcrdr.agentapi.lsn import format_lsn, parse_lsn
from pgcrdr.agentapi.models import DivergentCommit

log = logging.getLogger(__name__)

_ENV = {"LANG": "C", "LC_ALL": "C", "PATH": "/usr/bin:/bin"}

WAL_SEGMENT = 16 * 1024 * 1024
SEGMENTS_PER_XLOGID = 0x100000000 // WAL_SEGMENT


def wal_name(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // SEGMENTS_PER_XLOGID:08X}{segno % SEGMENTS_PER_XLOGID:08X}"


def wal_segno(name: str) -> tuple[int, int]:
    """(timeline, segment number) of a WAL file name."""
    if len(name) < 24:
        raise ValueError(f"not a WAL file name: {name!r}")
    return int(name[:8], 16), int(name[8:16], 16) * SEGMENTS_PER_XLOGID + int(name[16:24], 16)


def segno_of(lsn: str) -> int:
    return parse_lsn(lsn) // WAL_SEGMENT


def segment_files(wal_dir: Path) -> list[tuple[int, int]]:
    """(timeline, segment number) of every complete WAL segment file in ``wal_dir``."""
    out = []
    for f in wal_dir.iterdir() if wal_dir.is_dir() else []:
        n = f.name
        if len(n) == 24 and all(ch in "0123456789ABCDEF" for ch in n):
            out.append(wal_segno(n))
    return out


def max_lsn(*values: str | None) -> str | None:
    """The most advanced of some LSNs (None ignored)."""
    known = [v for v in values if v]
    return format_lsn(max(parse_lsn(v) for v in known)) if known else None


def parse_controldata(text: str) -> dict[str, str]:
    """``pg_controldata`` output as {label: value}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep:
            out[label.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ControlData:
    state: str  # "in production", "shut down", "shut down in recovery", "in archive recovery", ...
    checkpoint_lsn: str  # "Latest checkpoint location"
    redo_lsn: str  # "Latest checkpoint's REDO location"
    timeline: int  # "Latest checkpoint's TimeLineID"
    min_recovery_lsn: str | None = None  # "Minimum recovery ending location" (standbys)

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> ControlData:
        mr = f.get("Minimum recovery ending location")
        return cls(
            state=f.get("Database cluster state", "unknown"),
            checkpoint_lsn=f["Latest checkpoint location"],
            redo_lsn=f["Latest checkpoint's REDO location"],
            timeline=int(f["Latest checkpoint's TimeLineID"]),
            min_recovery_lsn=mr if mr and parse_lsn(mr) else None,
        )


def controldata(pg_bin: Path, data_dir: Path) -> ControlData:
    r = subprocess.run([str(pg_bin / "pg_controldata"), "-D", str(data_dir)], capture_output=True, text=True,
                       env=_ENV, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"pg_controldata {data_dir} failed: {r.stderr.strip() or r.stdout.strip()}")
    return ControlData.from_fields(parse_controldata(r.stdout))


# pg_control (native byte order) starts with system_identifier (uint64), pg_control_version and catalog_version_no
# (uint32 each), then the cluster state (DBState, an int), at the same offset since PostgreSQL 9.x.
_STATE_OFFSET = 16
DB_SHUTDOWNED = 1


def raw_cluster_state(data_dir: Path) -> int | None:
    """The cluster state field of ``global/pg_control`` read straight from the file (no process:
    cheap enough to poll every few ms); None when it cannot be read. PostgreSQL writes pg_control
    in one write of its first 512 bytes, so this field is never seen half-written; callers still
    confirm with ``controldata`` (which checks the file's CRC) before relying on it."""
    try:
        with open(data_dir / "global" / "pg_control", "rb") as f:
            head = f.read(_STATE_OFFSET + 4)
    except OSError:
        return None
    if len(head) < _STATE_OFFSET + 4:
        return None
    return int.from_bytes(head[_STATE_OFFSET:_STATE_OFFSET + 4], sys.byteorder, signed=True)


def controldata_or_none(pg_bin: Path, data_dir: Path) -> ControlData | None:
    """``controldata``, or None when there is no data directory (no pg_control)."""
    if not (data_dir / "global" / "pg_control").exists():
        return None
    return controldata(pg_bin, data_dir)


# "pg_waldump: error: error in WAL record at 0/15165D0: invalid record length at 0/1516768: wanted 24, got 0"
_ANY_LSN = re.compile(r"\b([0-9A-F]{1,8}/[0-9A-F]{1,8})\b")
_RECORD_LSN = re.compile(r"\blsn: ([0-9A-F]+/[0-9A-F]+)")


def parse_waldump_end(stdout: str, stderr: str) -> str | None:
    """Where the readable WAL ends: the last position named by pg_waldump's closing error (the
    record it could not decode), else the start of the last record it printed."""
    for line in reversed(stderr.splitlines()):
        if "error in WAL record at" in line:
            found = _ANY_LSN.findall(line)
            if found:
                return format_lsn(parse_lsn(found[-1]))
    last = None
    for m in _RECORD_LSN.finditer(stdout):
        last = m.group(1)
    return format_lsn(parse_lsn(last)) if last else None


# rmgr: Transaction len (rec/tot):     34/    34, tx:        739, lsn: 0/03000148, prev 0/03000110,
#   desc: COMMIT 2024-05-01 10:00:00.123456 UTC
_COMMIT = re.compile(
    r"rmgr: Transaction .*?tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), .*?desc: COMMIT(?:_PREPARED)? "
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? ?[A-Z+\-0-9]*)?"
)


def parse_waldump_commits(stdout: str) -> list[DivergentCommit]:
    """COMMIT records of a ``pg_waldump --rmgr=Transaction`` listing."""
    out = []
    for line in stdout.splitlines():
        m = _COMMIT.search(line)
        if m:
            when = m.group(3).strip().rstrip(";") if m.group(3) else None
            out.append(DivergentCommit(lsn=format_lsn(parse_lsn(m.group(2))), xid=int(m.group(1)),
                                       commit_time=when or None))
    return out


def _waldump(pg_bin: Path, wal_dir: Path, timeline: int, start: str, *extra: str,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pg_bin / "pg_waldump"), "--path", str(wal_dir), "--timeline", str(timeline), "--start", start,
         *extra],
        capture_output=True, text=True, env=_ENV, timeout=timeout,
    )


def end_of_wal(pg_bin: Path, data_dir: Path, cd: ControlData | None = None) -> str | None:
    """The end of the WAL a data directory holds on its latest timeline, read from the latest
    checkpoint on; None if pg_waldump cannot tell."""
    cd = cd or controldata(pg_bin, data_dir)
    wal_dir = data_dir / "pg_wal"
    r = _waldump(pg_bin, wal_dir, cd.timeline, cd.checkpoint_lsn, "--quiet")
    end = parse_waldump_end(r.stdout, r.stderr)
    # A promotion writes on a new timeline before its first checkpoint names it in pg_control:
    # read the newer timelines' segments too (pg_waldump does not follow timeline history).
    for tli in newer_timelines(wal_dir, cd.timeline):
        start = first_segment_at_or_after(wal_dir, tli, parse_lsn(cd.checkpoint_lsn))
        if start is None:
            continue
        r = _waldump(pg_bin, wal_dir, tli, format_lsn(start), "--quiet")
        later = parse_waldump_end(r.stdout, r.stderr)
        if later and (end is None or parse_lsn(later) > parse_lsn(end)):
            end = later
    return end


def disk_position(pg_bin: Path, data_dir: Path) -> tuple[ControlData | None, str | None]:
    """(control data, most advanced position on disk: latest checkpoint or end of WAL); (None,
    None) without a data directory."""
    cd = controldata_or_none(pg_bin, data_dir)
    if cd is None:
        return None, None
    end = None
    try:
        end = end_of_wal(pg_bin, data_dir, cd)
    except Exception as exc:  # best effort
        log.info("end of WAL of %s unknown: %s", data_dir, exc)
    return cd, max_lsn(cd.checkpoint_lsn, end, cd.min_recovery_lsn)


def most_advanced(pg_bin: Path, data_dirs: dict[str, Path]) -> tuple[str, ControlData, str | None] | None:
    """(node, control data, end of WAL) of the node whose data directory is furthest ahead
    (highest timeline, then position); None when no node has data."""
    best: tuple[tuple[int, int], str, ControlData, str | None] | None = None
    for name, data_dir in data_dirs.items():
        cd, end = disk_position(pg_bin, data_dir)
        if cd is None:
            continue
        key = (cd.timeline, parse_lsn(end or cd.checkpoint_lsn))
        if best is None or key > best[0]:
            best = (key, name, cd, end)
    return best[1:] if best else None


def newer_timelines(wal_dir: Path, timeline: int) -> list[int]:
    """Timelines above ``timeline`` that have WAL segment files in ``wal_dir``, ascending."""
    return sorted({tli for tli, _ in segment_files(wal_dir) if tli > timeline})


def first_segment_at_or_after(wal_dir: Path, timeline: int, lsn: int) -> int | None:
    """Start LSN of the first WAL segment file of ``timeline`` in ``wal_dir`` at or after ``lsn``."""
    found = [seg for tli, seg in segment_files(wal_dir) if tli == timeline and seg >= lsn // WAL_SEGMENT]
    return min(found) * WAL_SEGMENT if found else None


_MISSING_SEGMENT = re.compile(r'could not find file "([0-9A-F]{24})": No such file')


def nothing_written_from(waldump_stderr: str, segments: list[str]) -> bool:
    """pg_waldump found no WAL at or after its start: no valid record there, or not even the
    segment of the start while no later segment exists either (a failover of a live, idle primary
    forks at the start of a segment the old writer never began). ``segments``: the WAL file names
    present. A missing segment with later ones present is a gap, not the end: not "nothing"."""
    if "could not find a valid record" in waldump_stderr:
        return True
    m = _MISSING_SEGMENT.search(waldump_stderr)
    if m is None:
        return False
    missing = m.group(1)[8:]  # log and segment number, across timelines
    return not any(len(f) == 24 and f[8:] > missing for f in segments)


def commits_after(pg_bin: Path, wal_dir: Path, timeline: int, start: str) -> tuple[list[DivergentCommit], str | None]:
    """COMMIT records of ``wal_dir`` from ``start`` on (pg_waldump finds the first record at or
    after it), and where the WAL ends."""
    r = _waldump(pg_bin, wal_dir, timeline, start, "--rmgr=Transaction")
    segments = [f.name for f in wal_dir.iterdir()] if wal_dir.is_dir() else []
    if r.returncode != 0 and not r.stdout and nothing_written_from(r.stderr, segments):
        return [], None
    if r.returncode != 0 and not r.stdout and "could not find file" in r.stderr:
        # The segment of ``start`` is gone but later ones exist: the old writer went on and
        # recycled it; read from the first segment it still has.
        later = first_segment_at_or_after(wal_dir, timeline, parse_lsn(start))
        if later is None:
            return [], None
        start = format_lsn(later)
        r = _waldump(pg_bin, wal_dir, timeline, start, "--rmgr=Transaction")
    if r.returncode != 0 and not r.stdout and "could not find a valid record" in r.stderr:
        return [], None
    if r.returncode != 0 and not r.stdout and "error in WAL record" not in r.stderr:
        raise RuntimeError(f"pg_waldump failed: {r.stderr.strip()}")
    end = _waldump(pg_bin, wal_dir, timeline, start, "--quiet")
    return parse_waldump_commits(r.stdout), parse_waldump_end("", end.stderr)
