"""What every devcloud route shares: the :class:`DevCloud` (store, cloud Redis, settings) and JSON replies.

Both blueprints find it on ``current_app``, so the app factory stays the one place that wires things up.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify, request

from .store import Store
from .store_error import StoreError

__all__ = [
    "DEFAULT_API_PREFIX",
    "EXTENSION_KEY",
    "REDIS_TIMEOUT_SEC",
    "DevCloud",
    "JsonMap",
    "Reply",
    "current_cloud",
    "devcloud_of",
    "fail",
    "redis_unavailable",
    "reply",
]

#: Where the cloud serves the node API.
DEFAULT_API_PREFIX = "/api/internal/qpu"
#: Socket timeouts of the simulator's own Redis client.
REDIS_TIMEOUT_SEC = 5.0
#: Key in ``app.extensions`` holding the :class:`DevCloud`.
EXTENSION_KEY = "coda_devcloud"

Reply = tuple[Response, int]
JsonMap = dict[str, Any]


class DevCloud:
    """What every route shares: the store, the cloud's Redis, and settings."""

    def __init__(
        self,
        store: Store,
        *,
        redis_url: str | None,
        redis_client: redis.Redis | None,
        public_base_url: str | None,
        api_prefix: str,
        accept_unknown_jobs: bool,
        required_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.redis_url = redis_url
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.api_prefix = api_prefix
        self.accept_unknown_jobs = accept_unknown_jobs
        #: Headers every node API request must carry, as a staging deployment behind protection demands.
        self.required_headers = dict(required_headers or {})
        self._redis = redis_client
        self._redis_lock = threading.Lock()

    def redis(self) -> redis.Redis:
        """The cloud's Redis client, made on first use; a 503 when none is configured."""
        with self._redis_lock:
            if self._redis is None:
                if not self.redis_url:
                    raise StoreError(503, "the simulator has no cloud Redis (start it with --redis-url)")
                self._redis = redis.Redis.from_url(
                    self.redis_url,
                    decode_responses=True,
                    socket_timeout=REDIS_TIMEOUT_SEC,
                    socket_connect_timeout=REDIS_TIMEOUT_SEC,
                )
            return self._redis

    def has_redis(self) -> bool:
        """Whether a cloud Redis is configured."""
        return bool(self.redis_url) or self._redis is not None

    def base_url(self) -> str:
        """The cloud's base URL: configured, or as the current request sees it."""
        return self.public_base_url or request.host_url.rstrip("/")

    def path(self, name: str) -> str:
        """One node API path, e.g. ``/api/internal/qpu/heartbeat``."""
        return f"{self.api_prefix}/{name}"


def devcloud_of(app: Flask) -> DevCloud:
    """The :class:`DevCloud` behind an app made by :func:`~.app_factory.create_app`."""
    cloud: DevCloud = app.extensions[EXTENSION_KEY]
    return cloud


def current_cloud() -> DevCloud:
    """The :class:`DevCloud` of the app serving the current request."""
    return devcloud_of(current_app)


def fail(status: int, message: str) -> StoreError:
    """The error to raise for an HTTP ``status`` answer; the app turns it into ``{"error": message}``."""
    return StoreError(status, message)


def redis_unavailable(exc: redis.RedisError) -> StoreError:
    """The 503 for a failed call to the cloud's Redis."""
    return fail(503, f"cloud Redis unavailable: {type(exc).__name__}: {exc}")


def reply(body: Mapping[str, Any], status: int = 200) -> Reply:
    """A JSON answer."""
    return jsonify(body), status
