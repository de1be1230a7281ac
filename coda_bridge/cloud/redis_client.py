"""Clients of the cloud's Redis: the job stream, status hashes and cancel keys live there."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["REDIS_SOCKET_TIMEOUT_SEC", "cloud_redis_client"]

#: Socket timeout of ordinary commands to either Redis.
REDIS_SOCKET_TIMEOUT_SEC = 5.0


def cloud_redis_client(url: str, *, block_sec: float = 0.0, client_name: str | None = None) -> redis.Redis:
    """A client for the cloud's Redis that rides out short blips (3 retries with backoff).

    ``client_name``: set on each of its connections (``CLIENT SETNAME``), so they can be found.
    """
    return redis.Redis.from_url(
        url,
        client_name=client_name,
        decode_responses=True,
        # bytes that are not UTF-8 survive as surrogates: keys stay byte-exact, and the bridge
        # refuses such a job id (pipeline/bounds.py) instead of merging it with another
        encoding_errors="surrogateescape",
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SEC,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SEC + block_sec,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
