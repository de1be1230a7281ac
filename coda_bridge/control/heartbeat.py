"""The heartbeat (PROTOCOL.md section 3): the node's shared state, signed and posted.

A rejection or a transport error is a warning and a counter, never a
retry storm: the next tick comes soon enough.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..broker.shared_state import NodeState
from ..cloud.client import CloudClient
from ..cloud.signing import Signer
from ..errors import NodeError

__all__ = ["heartbeat_body", "send_heartbeat"]

logger = logging.getLogger(__name__)

#: How long a cloud-Redis health mark from a heartbeat stays valid.
HEALTH_TTL_SEC = 90.0
#: One PING, no retries: an unreachable cloud Redis must not hold the heartbeat back.
PING_TIMEOUT_SEC = 2.0

_ping_clients: dict[str, redis.Redis] = {}
_ping_lock = threading.Lock()


def _ping_client(url: str) -> redis.Redis:
    """A client for health pings only (the process's own client retries with backoff)."""
    with _ping_lock:
        client = _ping_clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=PING_TIMEOUT_SEC,
                socket_connect_timeout=PING_TIMEOUT_SEC,
                retry=Retry(NoBackoff(), 0),
            )
            _ping_clients[url] = client
        return client


def _cloud_redis_reachable(redis_url: str | None) -> bool:
    if not redis_url:
        return False
    try:
        return bool(_ping_client(redis_url).ping())
    except redis.RedisError:
        return False


def heartbeat_body(state: NodeState, redis_url: str | None) -> dict[str, Any]:
    """``current_job``, ``last_job_at``, ``redis_healthy`` and ``connectivity`` as the node knows them."""
    healthy = _cloud_redis_reachable(redis_url)
    state.set_cloud_redis(healthy, HEALTH_TTL_SEC)
    return {
        "current_job": state.current_job(),
        "last_job_at": state.last_job_at(),
        "redis_healthy": healthy,
        "connectivity": state.connectivity(),
    }


def send_heartbeat(state: NodeState, cloud: CloudClient, signer: Signer, redis_url: str | None) -> bool:
    """Post one heartbeat; True when the cloud accepted it."""
    body = heartbeat_body(state, redis_url)
    try:
        cloud.heartbeat(signer, body)
    except NodeError as exc:  # rejected (HeartbeatRejected) or unreachable
        state.count("heartbeats_rejected")
        logger.warning("%s", exc)
        return False
    state.count("heartbeats_sent")
    state.heartbeat_accepted()
    return True
