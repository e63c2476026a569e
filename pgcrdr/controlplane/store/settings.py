"""Which store the control plane uses: ``PGCRDR_STORE`` (``sqlite``, the default, or ``etcd``),
``PGCRDR_STORE_ENDPOINTS`` (etcd's client URLs, comma-separated) and ``PGCRDR_STORE_PREFIX``
(etcd's key prefix); without ``PGCRDR_STORE``, the etcd a topology file names (``[control] store``).
A wrong setting is refused with a message naming it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pgcrdr.controlplane.store.etcd import DEFAULT_PREFIX
from pgcrdr.etcdv3 import StoreTLS
from pgcrdr.topology import split_client_url

if TYPE_CHECKING:
    from pgcrdr.config import Settings

BACKENDS = ("sqlite", "etcd")


class StoreSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    tls: StoreTLS | None = None  # https members: the CA and this part's client certificate

    @classmethod
    def for_settings(cls, settings: Settings, env: Mapping[str, str] = os.environ) -> StoreSettings:
        """The store of a part of the deployment: from the environment, else its topology; with
        https endpoints, the TLS files of its secrets bundle (``Settings.store_tls``)."""
        chosen = cls.from_env(env, topology_endpoints=settings.store_endpoints)
        if any(e.startswith("https://") for e in chosen.endpoints):
            return replace(chosen, tls=settings.store_tls)
        return chosen

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, topology_endpoints: tuple[str, ...] = ()) -> StoreSettings:
        """From the environment; ``topology_endpoints`` (a topology's ``[control] store``) when it
        names no store."""
        backend = env.get("PGCRDR_STORE", "").strip().lower()
        raw = env.get("PGCRDR_STORE_ENDPOINTS", "").strip()
        prefix = env.get("PGCRDR_STORE_PREFIX", "").strip() or DEFAULT_PREFIX
        if not backend and not raw and topology_endpoints:
            return cls(backend="etcd", endpoints=topology_endpoints, prefix=_prefix(prefix))
        backend = backend or "sqlite"
        if backend not in BACKENDS:
            raise StoreSettingsError(f"PGCRDR_STORE={backend[:40]!r} is not a store: use sqlite (the default) or etcd")
        if backend == "sqlite":
            if raw:
                raise StoreSettingsError("PGCRDR_STORE_ENDPOINTS is set but the store is sqlite: "
                                         "set PGCRDR_STORE=etcd to use etcd")
            return cls()
        endpoints = tuple(endpoint_url(e.strip()) for e in raw.split(",") if e.strip())
        if not endpoints:
            raise StoreSettingsError("PGCRDR_STORE=etcd needs PGCRDR_STORE_ENDPOINTS, etcd's client URLs: "
                                     "http://HOST:PORT,http://HOST:PORT,...")
        return cls(backend="etcd", endpoints=endpoints, prefix=_prefix(prefix))


def _prefix(prefix: str) -> str:
    if not (prefix.startswith("/") and prefix.endswith("/")) or len(prefix) < 2:
        raise StoreSettingsError(f"PGCRDR_STORE_PREFIX={prefix[:60]!r}: a key prefix starts and ends with '/', "
                                 "e.g. /pgcrdr/v1/")
    return prefix


def endpoint_url(raw: str) -> str:
    """``raw`` as an etcd client URL (http or https, a host and a port, nothing else)."""
    parts = split_client_url(raw)
    if parts is None:
        raise StoreSettingsError(f"PGCRDR_STORE_ENDPOINTS: {raw[:80]!r} is not an etcd client URL "
                                 "(http://HOST:PORT)")
    scheme, host, port = parts
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
