"""HTTP client for the Coda cloud: connect, heartbeat and result delivery.

One pooled :class:`requests.Session` per process, explicit timeouts, and
every transport or HTTP failure turned into one of our errors carrying the
cloud's own message, never a bearer value.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ..errors import HeartbeatRejected, NodeError, WebhookError
from ..logs import mask
from ..settings import Settings
from .signing import Signer

__all__ = ["CloudClient", "cloud_message"]

logger = logging.getLogger(__name__)

#: First pause between connect attempts; doubles after each failure.
CONNECT_BACKOFF_BASE_SEC = 1.0
#: How much of a non-JSON answer is quoted in an error.
EXCERPT_CHARS = 120
#: Connections kept per host in the pool (webhook threads share it).
POOL_SIZE = 32

_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def cloud_message(response: requests.Response) -> str:
    """The cloud's own explanation: its ``error`` (or ``detail``) field, else a short text excerpt."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for field in ("error", "detail", "message"):
            if isinstance(body.get(field), str):
                return mask(str(body[field])[:500])
    text = mask(_SPACE.sub(" ", _TAGS.sub(" ", response.text or "")).strip())
    if not text:
        return "(empty body)"
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


class CloudClient:
    """Talks to ``webapp_url`` with pooled connections; thread-safe for concurrent posts."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "coda-bridge"
        # Proxy and .netrc look-ups from the environment cost a third of each request; opt in.
        self.session.trust_env = settings.use_env_proxies

    def close(self) -> None:
        self.session.close()

    # -- connect (PROTOCOL.md 1.1) --

    def connect(self, bearer: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST the connect request; retry 5xx and transport errors with backoff; 4xx fails at once."""
        settings = self.settings
        url = settings.url(settings.connect_path)
        headers = dict(settings.node_connect_headers)
        headers["Authorization"] = f"Bearer {bearer}"
        attempts = settings.node_connect_retries
        for attempt in range(1, attempts + 1):
            try:
                response = self.session.post(
                    url, json=dict(body), headers=headers, timeout=settings.node_timeout_sec
                )
            except requests.RequestException as exc:
                error = NodeError(f"cannot reach the cloud at {url}: {type(exc).__name__}")
            else:
                if response.ok:
                    return self._bundle(response, url)
                message = f"cloud refused connect ({response.status_code}): {cloud_message(response)}"
                error = NodeError(message, status=response.status_code)
                if response.status_code < 500:
                    raise error
            if attempt < attempts:
                delay = CONNECT_BACKOFF_BASE_SEC * 2 ** (attempt - 1)
                logger.warning(
                    "Connect attempt %d/%d failed (%s); retrying in %.0f s.", attempt, attempts, error, delay
                )
                self._sleep(delay)
        raise NodeError(f"{error} (gave up after {attempts} attempts)", status=error.status)

    @staticmethod
    def _bundle(response: requests.Response, url: str) -> dict[str, Any]:
        try:
            bundle = response.json()
        except ValueError:
            raise NodeError(
                f"cloud answered {response.status_code} at {url} with a body that is not JSON: "
                f"{cloud_message(response)}",
                status=response.status_code,
            ) from None
        if not isinstance(bundle, dict):
            raise NodeError(
                f"cloud answered {url} with JSON that is not an object", status=response.status_code
            )
        return bundle

    # -- heartbeat (PROTOCOL.md 3) --

    def heartbeat(self, signer: Signer, body: Mapping[str, Any]) -> None:
        """POST one heartbeat; :class:`HeartbeatRejected` on non-2xx, :class:`NodeError` on transport."""
        url = self.settings.url(self.settings.heartbeat_path)
        try:
            response = self.session.post(
                url, json=dict(body), headers=signer.authorization(), timeout=self.settings.node_timeout_sec
            )
        except requests.RequestException as exc:
            raise NodeError(f"heartbeat to {url} failed: {type(exc).__name__}") from None
        if not response.ok:
            raise HeartbeatRejected(
                f"cloud rejected heartbeat ({response.status_code}): {cloud_message(response)}",
                status=response.status_code,
            )

    # -- results (PROTOCOL.md 5) --

    def deliver(self, url: str, signer: Signer, payload: Mapping[str, Any]) -> None:
        """POST one result with a fresh JWT; :class:`WebhookError` says whether to retry."""
        try:
            response = self.session.post(
                url,
                json=dict(payload),
                headers=signer.authorization(),
                timeout=self.settings.webhook_timeout_sec,
            )
        except requests.RequestException as exc:
            raise WebhookError(f"webhook to {url} failed: {type(exc).__name__}") from None
        if not response.ok:
            raise WebhookError(
                f"cloud answered webhook with {response.status_code}: {cloud_message(response)}",
                status=response.status_code,
            )
