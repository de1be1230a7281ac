"""The admin client's HTTP: one JSON request to the simulator, and :class:`DevCloudError` for every refusal.

:class:`~.admin_client.DevCloudClient` builds on :class:`AdminTransport` and adds one method per admin route.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from ...errors import CodaError

__all__ = ["DEFAULT_TIMEOUT_SEC", "AdminTransport", "DevCloudError"]

#: Timeout of one admin request.
DEFAULT_TIMEOUT_SEC = 10.0


class DevCloudError(CodaError):
    """The simulator refused an admin request, or could not be reached (``status`` None)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AdminTransport:
    """JSON over HTTP to one running simulator at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_sec: float = DEFAULT_TIMEOUT_SEC,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_sec = timeout_sec
        self.session = session or requests.Session()

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, *, json_body: Any = None, params: Any = None) -> Any:
        """One admin call; the decoded JSON answer, or :class:`DevCloudError`."""
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(
                method, url, json=json_body, params=params, timeout=self.timeout_sec
            )
        except requests.RequestException as exc:
            raise DevCloudError(f"devcloud at {self.base_url} unreachable: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.ok:
            message = body.get("error") if isinstance(body, dict) else None
            raise DevCloudError(
                f"devcloud {method} {path}: HTTP {response.status_code}: {message or response.text[:200]}",
                status=response.status_code,
            )
        return body

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with the query ``params`` that are not None (booleans as true/false)."""
        wanted = {k: _param(v) for k, v in params.items() if v is not None}
        return self.request("GET", path, params=wanted)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """POST ``body`` as JSON, leaving out its None fields."""
        return self.request("POST", path, json_body={k: v for k, v in (body or {}).items() if v is not None})


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
