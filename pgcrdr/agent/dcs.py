"""The CRDR part of a cluster's Patroni dynamic configuration (the ``config`` key in etcd).

``bootstrap.dcs`` only applies when a scope is first initialized; afterwards the DCS is the
truth. So the agent compares the DCS with the spec (``dcs_patch``, pure) and writes the
difference: through Patroni's ``PATCH /config`` when a node runs (it wakes the HA loop at once),
else straight into etcd, before any Patroni of the cluster is started. That order is what makes
"a cluster whose spec says standby_of never starts as a writer" hold.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any


from pgcrdr.agent.localhttp import LOCAL

from pgcrdr.agent.etcd import NAMESPACE
from pgcrdr.agentapi.models import ClusterSpec, StandbySource
from pgcrdr.config import RegionConfig


def standby_cluster_config(source: StandbySource | None) -> dict[str, Any] | None:
    """Patroni's ``standby_cluster`` section for a source (None: not a standby cluster)."""
    if source is None:
        return None
    cfg: dict[str, Any] = {"host": source.host, "port": source.port,
                           "create_replica_methods": ["basebackup"]}
    if source.primary_slot_name:
        cfg["primary_slot_name"] = source.primary_slot_name
    return cfg


def slots_config(slots: list[str]) -> dict[str, Any]:
    return {name: {"type": "physical"} for name in slots}


def sync_mode(spec: ClusterSpec) -> bool | str:
    """Patroni's ``synchronous_mode`` for the spec: off for one node (or when forced off),
    ``True`` for 2 nodes (one synchronous standby), ``"quorum"`` for 3 (``ANY 1 (b, c)``: either
    standby acknowledges a commit, so losing any one node keeps both writes and failover going).
    Never strict: when the synchronous standby is lost the writer goes on alone (degraded).
    Patroni ignores it while the cluster is a standby cluster and applies it at promotion."""
    if spec.node_count < 2 or not spec.sync_replication:
        return False
    return "quorum" if spec.node_count >= 3 else True


def sync_dcs(spec: ClusterSpec) -> dict[str, Any]:
    """The synchronous-replication keys of the dynamic configuration."""
    mode = sync_mode(spec)
    if mode is False:
        return {"synchronous_mode": False}
    return {"synchronous_mode": mode, "synchronous_node_count": 1, "synchronous_mode_strict": False}


def crdr_dcs(spec: ClusterSpec) -> dict[str, Any]:
    """The keys of the dynamic configuration the spec decides (for bootstrap.dcs); the
    synchronous-replication keys only when synchronous replication applies."""
    out: dict[str, Any] = {}
    if sync_mode(spec) is not False:
        out.update(sync_dcs(spec))
    sc = standby_cluster_config(spec.standby_of)
    if sc is not None:
        out["standby_cluster"] = sc
    if spec.permanent_slots:
        out["slots"] = slots_config(spec.permanent_slots)
    return out


def _same(a: Any, b: Any) -> bool:
    """Patroni compares values by their string form (``"5432" == 5432``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return str(a) == str(b)


def dcs_patch(spec: ClusterSpec, current: dict[str, Any]) -> dict[str, Any] | None:
    """The PATCH that makes ``current`` (the DCS config) match the spec, or None if it does.

    ``standby_cluster`` is replaced as a whole (null removes it); ``slots`` are managed by name:
    a slot the spec does not list is removed (Patroni drops the slot itself)."""
    patch: dict[str, Any] = {}
    want_sc = standby_cluster_config(spec.standby_of)
    have_sc = current.get("standby_cluster") or None
    if want_sc is None:
        if have_sc is not None:
            patch["standby_cluster"] = None
    elif have_sc is None or not _same(want_sc, have_sc):
        sc: dict[str, Any] = dict(want_sc)
        for key in have_sc or {}:  # keys we do not set (e.g. an old slot name) must go
            sc.setdefault(key, None)
        patch["standby_cluster"] = sc
    want_slots = slots_config(spec.permanent_slots)
    have_slots = current.get("slots") or {}
    slots_patch: dict[str, Any] = {}
    for name, value in want_slots.items():
        if name not in have_slots or not _same(have_slots[name], value):
            slots_patch[name] = value
    for name in have_slots:
        if name not in want_slots:
            slots_patch[name] = None
    if slots_patch:
        patch["slots"] = slots_patch
    # absent keys mean Patroni's defaults (synchronous_mode off)
    defaults = {"synchronous_mode": False, "synchronous_node_count": 1, "synchronous_mode_strict": False}
    for key, value in sync_dcs(spec).items():
        have = current.get(key, defaults[key])
        if _mode_text(have) != _mode_text(value):
            patch[key] = value
    return patch or None


def _mode_text(v: Any) -> str:
    """Patroni reads ``synchronous_mode`` "on"/"true"/True alike."""
    s = str(v).lower()
    return {"on": "true", "off": "false"}.get(s, s)


def apply_patch(config: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Patroni's PATCH semantics (deep merge; None deletes), on a copy. Pure."""
    out = copy.deepcopy(config)

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if v is None:
                dst.pop(k, None)
            elif isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)

    merge(out, patch)
    return out


# --- I/O -------------------------------------------------------------------------------------


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _key(scope: str, name: str) -> str:
    return f"{NAMESPACE}{scope}/{name}"


def _etcd_get(region: RegionConfig, key: str, host: str) -> str | None:
    r = LOCAL.post(f"http://{host}:{region.etcd_client_port}/v3/kv/range", json={"key": _b64(key)}, timeout=3.0)
    r.raise_for_status()
    kvs = r.json().get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs and "value" in kvs[0] else (
        "" if kvs else None)


def read_config(region: RegionConfig, scope: str, host: str = "127.0.0.1") -> tuple[dict[str, Any] | None, bool]:
    """(the scope's dynamic configuration or None, whether the scope was ever initialized)."""
    raw = _etcd_get(region, _key(scope, "config"), host)
    initialized = _etcd_get(region, _key(scope, "initialize"), host) is not None
    if raw is None:
        return None, initialized
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = {}
    return (value if isinstance(value, dict) else {}), initialized


def write_config(region: RegionConfig, scope: str, config: dict[str, Any], host: str = "127.0.0.1") -> None:
    """Write the dynamic configuration straight into etcd (only while no Patroni of the scope
    runs: a running one would be told through PATCH /config instead)."""
    r = LOCAL.post(
        f"http://{host}:{region.etcd_client_port}/v3/kv/put",
        json={"key": _b64(_key(scope, "config")), "value": _b64(json.dumps(config, separators=(",", ":")))},
        timeout=3.0,
    )
    r.raise_for_status()


def patch_via_rest(rest_port: int, patch: dict[str, Any], host: str = "127.0.0.1", timeout: float = 5.0) -> None:
    r = LOCAL.patch(f"http://{host}:{rest_port}/config", json=patch, timeout=timeout)
    if r.status_code >= 400:
        raise RuntimeError(f"PATCH /config on port {rest_port} answered {r.status_code}: {r.text.strip()[:200]}")
