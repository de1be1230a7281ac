"""The heartbeat (PROTOCOL.md section 3): the node's shared state, signed and posted.

A rejection or a transport error is a warning and a counter, never a
retry storm: the next tick comes soon enough.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from .errors import HeartbeatRejected, NodeError
from .runtime import Runtime

__all__ = ["heartbeat_body", "send_heartbeat"]

logger = logging.getLogger(__name__)

#: How long a cloud-Redis health mark from a heartbeat stays valid.
HEALTH_TTL_SEC = 90.0


def _cloud_redis_reachable(rt: Runtime) -> bool:
    try:
        return bool(rt.cloud_redis.ping())
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
