"""Forks: a new service made from another service's backups, at a point in time (Aiven's
``service_to_fork_from``, ``project_to_fork_from`` and ``recovery_target_time`` user_config keys).

Pure checks of a fork request against what the source's region last reported of its backups;
the region agent does the restore (``ClusterSpec.restore_from``). A refusal says what to do.
"""

from __future__ import annotations

from datetime import datetime

from pgcrdr.agentapi.times import format_time, parse_time
from pgcrdr.controlplane.errors import Refused, clip_repr
from pgcrdr.controlplane.records import ServiceRecord

FORK_KEYS = ("service_to_fork_from", "project_to_fork_from", "recovery_target_time")


def takes_writes(src: ServiceRecord) -> bool:
    """The source's writer runs, so its archive can be brought up to any past time."""
    return src.powered and src.standby_of is None and src.dr_role in (None, "active")


def fork_target_time(src: ServiceRecord, requested: object, now: datetime) -> datetime:
    """The time a fork of ``src`` restores to: ``requested`` (RFC 3339) or ``now``, within the
    source's recovery window: from the end of its oldest backup to now (to its last archived WAL
    when it takes no writes). Refused (400/409) with the window otherwise."""
    st = src.status.backup if src.status else None
    if st is None or not st.backups:
        raise Refused(409, f"Service {src.name} has no backup yet, so it cannot be forked; fork it once "
                           f"`avn service backup-list {src.name}` lists one")
    earliest = parse_time(st.backups[0].stop_time)
    latest, latest_why = now, "now"
    if not takes_writes(src):
        last = st.archive.last_archived_time if st.archive else None
        latest = parse_time(last) if last else parse_time(st.backups[-1].stop_time)
        latest_why = f"the end of its archive ({format_time(latest)}: it takes no writes)"
    if requested is None:
        return latest
    if not isinstance(requested, str):
        raise Refused(400, "Invalid user_config: recovery_target_time must be a string such as 2026-11-30T11:30:00Z")
    try:
        target = parse_time(requested)
    except ValueError:
        raise Refused(400, f"Invalid user_config: recovery_target_time {clip_repr(requested)} is not an RFC 3339 "
                           "time such as 2026-11-30T11:30:00Z") from None
    window = f"choose a time from {format_time(earliest)} to {latest_why}"
    if target > now:
        raise Refused(400, f"recovery_target_time {format_time(target)} is in the future (now is {format_time(now)}); "
                           f"{window}")
    if target < earliest:
        raise Refused(400, f"recovery_target_time {format_time(target)} is before the oldest backup of {src.name} "
                           f"(ended {format_time(earliest)}); {window}")
    if target > latest:
        raise Refused(400, f"recovery_target_time {format_time(target)} is after {latest_why} of {src.name}; "
                           f"{window}")
    return target
