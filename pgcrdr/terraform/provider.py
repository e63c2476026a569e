"""The ``aiven/aiven`` provider served by pgcrdr: configured like the real one.

``api_token`` or env ``AIVEN_TOKEN``; the API base URL from env ``AIVEN_WEB_URL`` (no ``/v1``), or
the optional ``api_url`` attribute (pgcrdr only). No API call is made at configure time.
"""

from __future__ import annotations

import os
import threading

from tf.iface import Config, DataSource, Provider, Resource
from tf.schema import Attribute, Schema
from tf.types import String, Unknown
from tf.utils import Diagnostics

from pgcrdr.terraform.client import DEFAULT_URL, ApiClient
from pgcrdr.terraform.integrations import ServiceIntegration
from pgcrdr.terraform.services import PgData, PgService, PostgresqlData, PostgresqlService


def _set(value: object) -> bool:
    return isinstance(value, str) and value != "" and value is not Unknown


class AivenProvider(Provider):
    def __init__(self) -> None:
        self.client: ApiClient | None = None
        self._lock = threading.Lock()

    def get_model_prefix(self) -> str:
        return "aiven_"

    def full_name(self) -> str:
        return "registry.terraform.io/aiven/aiven"

    def get_provider_schema(self, diags: Diagnostics) -> Schema:
        return Schema(version=0, attributes=[
            Attribute("api_token", String(), optional=True, sensitive=True,
                      description="API token (default: env AIVEN_TOKEN)"),
            Attribute("api_url", String(), optional=True,
                      description="API base URL without /v1 (default: env AIVEN_WEB_URL)"),
        ])

    def validate_config(self, diags: Diagnostics, config: Config) -> None:
        url = config.get("api_url")
        if _set(url) and not str(url).startswith(("http://", "https://")):
            diags.add_error(f"Invalid api_url {url!r}: use http(s)://HOST:PORT (without /v1)", path=["api_url"])

    def configure_provider(self, diags: Diagnostics, config: Config) -> None:
        token = config.get("api_token") if _set(config.get("api_token")) else os.environ.get("AIVEN_TOKEN", "")
        url = config.get("api_url") if _set(config.get("api_url")) else os.environ.get("AIVEN_WEB_URL", "")
        if not token:
            diags.add_error("No API token", "Set api_token in the provider block or the AIVEN_TOKEN environment "
                                            "variable (pgcrdr status shows the token)")
            return
        with self._lock:
            if self.client is not None:
                self.client.close()
            self.client = ApiClient(url or DEFAULT_URL, token)

    def get_data_sources(self) -> list[type[DataSource]]:
        return [PgData, PostgresqlData]

    def get_resources(self) -> list[type[Resource]]:
        return [PgService, PostgresqlService, ServiceIntegration]
