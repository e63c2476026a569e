"""The region's etcd: one member, Patroni's DCS for every cluster of the region."""

from __future__ import annotations

import base64

import httpx

from pgcrdr.agent.localhttp import LOCAL

from pgcrdr.config import RegionConfig

# Patroni keys live under <NAMESPACE><scope>/ ; one scope per cluster.
NAMESPACE = "/service/"


def etcd_argv(region: RegionConfig, data_dir: str, host: str = "127.0.0.1") -> list[str]:
    name = f"etcd-{region.slug}"
    client = f"http://{host}:{region.etcd_client_port}"
    peer = f"http://{host}:{region.etcd_peer_port}"
    return [
        "/usr/bin/etcd",
        "--name", name,
        "--data-dir", data_dir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}",
        "--initial-cluster-state", "new",
        "--logger", "zap",
        "--log-outputs", "stderr",
    ]


def etcd_healthy(region: RegionConfig, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        r = LOCAL.get(f"http://{host}:{region.etcd_client_port}/health", timeout=timeout)
        return r.status_code == 200 and r.json().get("health") in ("true", True)
    except (httpx.HTTPError, ValueError):
        return False


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def delete_scope(region: RegionConfig, scope: str, host: str = "127.0.0.1") -> int:
    """Remove every Patroni key of ``scope`` so a cluster recreated with the same name starts
    from nothing (else Patroni finds the old ``initialize`` key and waits for a leader that
    never comes). Returns the number of keys deleted."""
    prefix = f"{NAMESPACE}{scope}/"
    range_end = prefix[:-1] + chr(ord("/") + 1)
    r = LOCAL.post(
        f"http://{host}:{region.etcd_client_port}/v3/kv/deleterange",
        json={"key": _b64(prefix), "range_end": _b64(range_end)},
        timeout=5.0,
    )
    r.raise_for_status()
    return int(r.json().get("deleted", 0))
