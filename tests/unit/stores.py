"""Store tests run on both backends: a module takes ``every_store_backend`` in (imported), and
each of its tests using the ``store`` or ``api`` fixture runs on SQLite and on etcd."""

from __future__ import annotations

import pytest

from pgcrdr.controlplane.store import EtcdStore, SQLiteStore, Store
from pgcrdr.etcdv3 import prefix_end


@pytest.fixture(name="store_backend", params=["sqlite", "etcd"])
def every_store_backend(request) -> str:
    return request.param


def raw_contents(store: Store) -> str:
    """Everything the store keeps, as text (to check what is never kept, e.g. a token)."""
    if isinstance(store, SQLiteStore):
        return "\n".join(store._db.iterdump())
    assert isinstance(store, EtcdStore)
    kvs, _, _ = store._gw.range(store.prefix, prefix_end(store.prefix))
    return "\n".join(f"{kv.key} {kv.value}" for kv in kvs)
