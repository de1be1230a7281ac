"""Control actors on their own queue: heartbeat and VPN check, skipped when older than their interval."""

from __future__ import annotations

import dramatiq

from coda_bridge.control.heartbeat import can_run_jobs, send_heartbeat
from coda_bridge.control.ticker import one_at_a_time
from coda_bridge.queueing.queues import CONTROL_QUEUE, HEARTBEAT_ACTOR, VPN_CHECK_ACTOR
from coda_bridge.vpn.guard import VpnGuard

from .shared import node

#: A control tick never needs longer than this.
TICK_LIMIT_MS = 60_000


# Control ticks: no retries (the next tick comes soon), skipped once stale (tick=True, StaleTicks).
@dramatiq.actor(
    actor_name=HEARTBEAT_ACTOR, queue_name=CONTROL_QUEUE, max_retries=0, time_limit=TICK_LIMIT_MS, tick=True
)
def heartbeat(slot_ts: float, expires_at: float | None = None) -> None:
    """Tell the cloud the node is alive, while it can run jobs."""
    settings, parts = node.settings, node.parts
    if can_run_jobs(parts.state, settings.jobs_worker_grace_sec, settings.heartbeat_interval_sec):
        send_heartbeat(parts.state, parts.cloud, parts.signer, settings.redis_url)


@dramatiq.actor(
    actor_name=VPN_CHECK_ACTOR, queue_name=CONTROL_QUEUE, max_retries=0, time_limit=TICK_LIMIT_MS, tick=True
)
@one_at_a_time
def vpn_check(slot_ts: float, expires_at: float | None = None) -> None:
    """Check the tunnel and probe targets; store the VPN state with an expiry (one check at a time)."""
    VpnGuard(node.settings, node.parts.state).check()
