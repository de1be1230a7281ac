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

from ..errors import HeartbeatRejected, NodeError
from ..runtime import Runtime

__all__ = ["heartbeat_body", "send_heartbeat"]

logger = logging.getLogger(__name__)

#: How long a cloud-Redis health mark from a heartbeat stays valid.
HEALTH_TTL_SEC = 90.0
#: One PING, no retries: an unreachable cloud Redis must not hold the heartbeat back.
PING_TIMEOUT_SEC = 2.0

_ping_clients: dict[str, redis.Redis] = {}
_ping_lock = threading.Lock()


def _ping_client(url: str) -> redis.Redis:
    """A client for health pings only (the runtime's own client retries with backoff)."""
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


def _cloud_redis_reachable(rt: Runtime) -> bool:
    if not rt.settings.redis_url:
        return False
    try:
        return bool(_ping_client(rt.settings.redis_url).ping())
    except redis.RedisError:
        return False


def heartbeat_body(rt: Runtime) -> dict[str, Any]:
    """``current_job``, ``last_job_at``, ``redis_healthy`` and ``connectivity`` as the node knows them."""
    healthy = _cloud_redis_reachable(rt)
    state = rt.state
    state.set_cloud_redis(healthy, HEALTH_TTL_SEC)
    return {
        "current_job": state.current_job(),
        "last_job_at": state.last_job_at(),
        "redis_healthy": healthy,
        "connectivity": state.connectivity(),
    }


def send_heartbeat(rt: Runtime) -> bool:
    """Post one heartbeat; True when the cloud accepted it."""
    body = heartbeat_body(rt)
    try:
        rt.cloud.heartbeat(rt.signer, body)
    except HeartbeatRejected as exc:
        rt.state.count("heartbeats_rejected")
        logger.warning("%s", exc)
        return False
    except NodeError as exc:
        rt.state.count("heartbeats_rejected")
        logger.warning("%s", exc)
        return False
    rt.state.count("heartbeats_sent")
    rt.state.heartbeat_accepted()
    return True
