"""The control plane's REST API, as a drill uses it: the same calls as ``avn`` and the console,
so a drill runs against any control-plane replica."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(RuntimeError):
    """An answer other than 2xx (``status``), or no answer at all (``status`` None)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status


class DrillApi:
    def __init__(self, api_url: str, token: str, project: str, timeout: float = 30.0):
        self.project = project
        self._http = httpx.Client(base_url=api_url, timeout=timeout,
                                  headers={"Authorization": f"aivenv1 {token}"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        try:
            r = self._http.request(method, f"/v1/project/{self.project}{path}", json=body)
        except httpx.HTTPError as exc:
            raise ApiError(None, f"the control plane at {self._http.base_url} does not answer: {exc}") from None
        if r.status_code >= 300:
            try:
                message = r.json().get("message") or r.text
            except ValueError:
                message = r.text
            raise ApiError(r.status_code, str(message).strip()[:500])
        return r.json()

    def service(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/service/{name}")["service"]

    def service_or_none(self, name: str) -> dict[str, Any] | None:
        try:
            return self.service(name)
        except ApiError as exc:
            if exc.status == 404 and "does not exist" in str(exc) and "Project" not in str(exc):
                return None
            raise

    def dr(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/service/{name}/disaster-recovery")

    def backups(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/service/{name}/backups")["backups"]

    def create_service(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/service", body)["service"]

    def delete_service(self, name: str) -> None:
        self._call("DELETE", f"/service/{name}")

    def set_role(self, name: str, role: str) -> dict[str, Any]:
        """What ``avn service update NAME --disaster-recovery-role ROLE`` sends."""
        return self._call("PUT", f"/service/{name}", {"disaster_recovery_role": role})["service"]

    def add_drill(self, pair: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/service/{pair}/disaster-recovery/drills", body)["drill"]

    def drills(self, pair: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/service/{pair}/disaster-recovery/drills")["drills"]
