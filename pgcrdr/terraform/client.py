"""The provider's HTTP client for the pgcrdr API (Aiven-compatible ``/v1``).

One client per provider process, shared by every resource handler: Terraform applies resources in
parallel and ``tf`` runs handlers on a thread pool, and ``httpx.Client`` is thread-safe.
Retries only where repeating is harmless: a request that never reached the server (connection
refused) is retried for every method; a 5xx or a timeout only for GET.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger("pgcrdr.terraform")

DEFAULT_URL = "https://api.aiven.io"
RETRIES = 4
RETRY_WAIT_S = 1.0


class ApiError(Exception):
    """A request the server refused (4xx/5xx) or could not be reached. ``message`` is the server's."""

    def __init__(self, status: int | None, message: str, method: str = "", path: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def where(self) -> str:
        """Which request got which answer, for the detail of a Terraform error."""
        if not self.method:
            return ""
        return f"{self.method} {self.path}" + (f" answered HTTP {self.status}" if self.status else " got no answer")


class WaitTimeout(Exception):
    """A bounded wait gave up; the message says what was awaited and what was last seen."""


class ApiClient:
    def __init__(self, base_url: str, token: str, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"aivenv1 {token}", "User-Agent": "pgcrdr-terraform-provider"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.http.request(method, path, json=body)
            except httpx.ConnectError as exc:  # nothing was sent: safe to repeat for any method
                if attempt <= RETRIES:
                    time.sleep(RETRY_WAIT_S * attempt)
                    continue
                raise ApiError(None, f"Cannot reach the pgcrdr API at {self.base_url}: {exc}", method, path) from None
            except httpx.TimeoutException as exc:
                if method == "GET" and attempt <= RETRIES:
                    time.sleep(RETRY_WAIT_S * attempt)
                    continue
                raise ApiError(None, f"The pgcrdr API at {self.base_url} did not answer in time: {exc}",
                               method, path) from None
            if resp.status_code >= 500 and method == "GET" and attempt <= RETRIES:
                time.sleep(RETRY_WAIT_S * attempt)
                continue
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, _message(resp), method, path)
            try:
                data = resp.json()
            except ValueError:
                data = {}
            return data if isinstance(data, dict) else {}

    # --- the calls the resources make ---------------------------------------------------
    def get_service(self, project: str, name: str) -> dict:
        return self.request("GET", f"/v1/project/{project}/service/{name}")["service"]

    def find_service(self, project: str, name: str) -> dict | None:
        try:
            return self.get_service(project, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def create_service(self, project: str, body: dict) -> dict:
        return self.request("POST", f"/v1/project/{project}/service", body)["service"]

    def update_service(self, project: str, name: str, body: dict) -> dict:
        return self.request("PUT", f"/v1/project/{project}/service/{name}", body)["service"]

    def delete_service(self, project: str, name: str) -> None:
        self.request("DELETE", f"/v1/project/{project}/service/{name}")

    def disaster_recovery(self, project: str, name: str) -> dict:
        return self.request("GET", f"/v1/project/{project}/service/{name}/disaster-recovery")

    def service_integrations(self, project: str, name: str) -> list[dict]:
        return self.request("GET", f"/v1/project/{project}/service/{name}/integration")["service_integrations"]

    def get_integration(self, project: str, integration_id: str) -> dict | None:
        try:
            return self.request("GET", f"/v1/project/{project}/integration/{integration_id}")["service_integration"]
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def create_integration(self, project: str, body: dict) -> dict:
        return self.request("POST", f"/v1/project/{project}/integration", body)["service_integration"]

    def delete_integration(self, project: str, integration_id: str) -> None:
        try:
            self.request("DELETE", f"/v1/project/{project}/integration/{integration_id}")
        except ApiError as exc:
            if not exc.not_found:
                raise


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip() or f"HTTP {resp.status_code}"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return str(data)


def wait_until(what: str, check: Callable[[], tuple[bool, str]], timeout: float, interval: float = 2.0,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Poll ``check`` (returns done?, what is seen now) until done or ``timeout`` seconds passed.
    Progress is logged to stderr (shown with TF_LOG); the timeout error says what was last seen."""
    deadline = clock() + timeout
    last = ""
    while True:
        done, seen = check()
        if done:
            return
        if seen != last:
            log.info("waiting for %s: %s", what, seen)
            last = seen
        if clock() >= deadline:
            raise WaitTimeout(f"Timed out after {timeout:.0f}s waiting for {what}; last seen: {seen}")
        sleep(interval)


def summary(svc: dict[str, Any] | None) -> str:
    if svc is None:
        return "gone"
    return f"{svc.get('service_name')} {svc.get('state')}/{svc.get('disaster_recovery_role') or 'no DR role'}"
