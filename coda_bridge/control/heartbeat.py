"""The heartbeat (PROTOCOL.md section 3): the node's shared state, signed and posted.

A rejection or a transport error is a warning and a counter, never a
retry storm: the next tick comes soon enough.  A node that cannot run jobs
does not heartbeat: once no jobs worker has had a built executor for the
grace (``jobs_worker_grace_sec``), heartbeats are withheld, so the cloud
shows the QPU offline as it does for a first runtime that could not start;
they resume at the first tick that finds a ready jobs worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..cloud.http_client import CloudClient
from ..cloud.signing import Signer
from ..errors import NodeError
from ..state.node_state import NodeState
from ..state.registry import ready_jobs_workers

__all__ = ["can_run_jobs", "heartbeat_body", "send_heartbeat"]

logger = logging.getLogger(__name__)

#: How long a cloud-Redis health mark from a heartbeat stays valid.
HEALTH_TTL_SEC = 90.0
#: The absence of a ready jobs worker is forgotten this long after the last tick saw it (beyond the grace):
#: this many heartbeat intervals, and at least the seconds below, so a few ticks dropped on a busy
#: machine do not restart the grace, while a node started again later does not inherit the absence.
ABSENCE_MEMORY_INTERVALS = 3
ABSENCE_MEMORY_MIN_SEC = 60.0
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


def can_run_jobs(state: NodeState, grace_sec: float, interval_sec: float, now: float | None = None) -> bool:
    """Whether a heartbeat may go: a jobs worker has a built executor, or none has for less than the grace.

    Says once, in one WARNING line, when heartbeats stop and why, and once when they resume.
    """
    now = time.time() if now is None else now
    ready = ready_jobs_workers(state.client, state.qpu_id)
    if ready:
        if state.jobs_worker_ready():
            logger.info("A jobs worker is ready again (%s); heartbeats resume.", ready[0].describe())
        return True
    memory_sec = grace_sec + max(ABSENCE_MEMORY_INTERVALS * interval_sec, ABSENCE_MEMORY_MIN_SEC)
    absent_sec = now - state.no_jobs_worker_since(memory_sec, now)
    if absent_sec < grace_sec:
        return True
    if state.withhold_heartbeats(memory_sec):
        logger.warning(
            "No jobs worker has a built executor for %.0f s, so heartbeats stop and the cloud will show "
            "the QPU offline; run `coda-bridge doctor`, fix the executor, then start the node or its "
            "jobs worker again.",
            absent_sec,
        )
    state.count("heartbeats_withheld")
    return False


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
