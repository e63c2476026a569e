from __future__ import annotations

import os
import uuid

import pytest
from fastapi.testclient import TestClient

from pgcrdr.api.app import create_app
from pgcrdr.config import Settings
from pgcrdr.controlplane.store import StoreSettings, open_store
from pgcrdr.platform import initialize
from tests.etcd_cluster import EtcdCluster
from tests.unit import api_pairs

STORE_ENV = ("PGCRDR_STORE", "PGCRDR_STORE_ENDPOINTS", "PGCRDR_STORE_PREFIX")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """One etcd member for the whole session (started only if a test asks for it); each test
    uses keys of its own (``store_env``)."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture()
def store_backend() -> str:
    """The store the ``api`` and ``store`` fixtures use: SQLite, or PGCRDR_TEST_STORE (sqlite or
    etcd) to run every test on etcd. Store test modules run each of their tests on both
    (``tests.unit.stores.every_store_backend``)."""
    return os.environ.get("PGCRDR_TEST_STORE", "sqlite")


@pytest.fixture()
def store_env(store_backend, request, monkeypatch) -> StoreSettings:
    """The store settings of this test, also in the environment (as the platform reads them):
    etcd with a key prefix of its own, or SQLite."""
    for name in STORE_ENV:
        monkeypatch.delenv(name, raising=False)
    if store_backend == "etcd":
        server = request.getfixturevalue("etcd_server")
        monkeypatch.setenv("PGCRDR_STORE", "etcd")
        monkeypatch.setenv("PGCRDR_STORE_ENDPOINTS", ",".join(server.endpoints))
        monkeypatch.setenv("PGCRDR_STORE_PREFIX", f"/pgcrdr-test/{uuid.uuid4().hex}/")
    return StoreSettings.from_env()


@pytest.fixture()
def store(store_env, tmp_path):
    """A store of its own for the test, empty."""
    s = open_store(Settings.from_env(home=tmp_path / "home"), store_env)
    yield s
    s.close()


@pytest.fixture()
def api(store_env, tmp_path):
    """The API on a real store in a scratch home, no regions, authenticated with the first token."""
    settings = Settings.from_env(home=tmp_path / "home")
    creds = initialize(settings)
    store = open_store(settings, store_env)
    client = TestClient(create_app(settings, store), raise_server_exceptions=False)
    client.headers["Authorization"] = f"aivenv1 {creds.token}"
    client.creds = creds  # type: ignore[attr-defined]
    client.store = store  # type: ignore[attr-defined]
    yield client
    store.close()


@pytest.fixture()
def pair(api):
    """pg-primary active and pg-primary-dr passive, both RUNNING and in sync, no operation running."""
    api_pairs.create(api, "pg-primary")
    api_pairs.create(api, "pg-primary-dr", cloud="local-us-east1", dr_for="pg-primary")
    api_pairs.finish_operations(api)
    api_pairs.set_running(api, "pg-primary")
    api_pairs.set_running(api, "pg-primary-dr", standby=True)
    return api
