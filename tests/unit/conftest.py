from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pgcrdr.api.app import create_app
from pgcrdr.config import Settings
from pgcrdr.controlplane.store import Store
from pgcrdr.platform import initialize
from tests.unit import api_pairs


@pytest.fixture()
def api(tmp_path):
    """The API on a real store in a scratch home, no regions, authenticated with the first token."""
    settings = Settings.from_env(home=tmp_path / "home")
    creds = initialize(settings)
    store = Store(settings.db_path)
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
