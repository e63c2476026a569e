"""The control plane's state: the :class:`Store` interface (``base``) and its backends, SQLite
(``sqlite``, the embedded default) and etcd v3 (``etcd``). :func:`open_store` opens the one the
settings name."""

from __future__ import annotations

from pgcrdr.config import Settings
from pgcrdr.controlplane.store.base import (
    EVENTS_KEPT_PER_PROJECT,
    SYSTEM_ACTOR,
    TOKEN_PREFIX_CHARS,
    EventRow,
    Store,
    StoreConflict,
    StoreError,
    StoreFenced,
    StoreUnavailable,
    TokenRow,
    Tx,
    hash_password,
    hash_token,
    parse_rfc3339,
    rfc3339,
    verify_password,
)
from pgcrdr.controlplane.store.etcd import EtcdStore, Fence
from pgcrdr.controlplane.store.settings import StoreSettings, StoreSettingsError
from pgcrdr.controlplane.store.sqlite import SQLiteStore

__all__ = [
    "EVENTS_KEPT_PER_PROJECT", "SYSTEM_ACTOR", "TOKEN_PREFIX_CHARS", "EtcdStore", "EventRow", "SQLiteStore",
    "Store", "StoreConflict", "StoreError", "StoreFenced", "StoreSettings", "StoreSettingsError", "StoreUnavailable",
    "TokenRow", "Tx", "hash_password", "hash_token", "open_store", "parse_rfc3339", "rfc3339", "verify_password",
]


def open_store(settings: Settings, store: StoreSettings | None = None, fence: Fence | None = None) -> Store:
    """The store ``store`` names (default: from the environment, else the deployment's topology,
    see ``store.settings``): etcd, or SQLite in the control plane's home. ``fence``: a leader's
    store on etcd, whose writes are made only while it leads (SQLite has one replica)."""
    chosen = store if store is not None else StoreSettings.for_settings(settings)
    if chosen.backend == "etcd":
        return EtcdStore(list(chosen.endpoints), prefix=chosen.prefix, fence=fence, tls=chosen.tls)
    return SQLiteStore(settings.db_path)
