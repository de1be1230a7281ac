"""Control actors on their own queue: heartbeat and VPN check, dropped when older than their interval."""

from __future__ import annotations

import logging

import dramatiq

from coda_bridge.broker.redis_broker import CONTROL_QUEUE
from coda_bridge.control.heartbeat import send_heartbeat
from coda_bridge.control.ticker import fresh_tick, one_at_a_time

from . import runtime, settings

logger = logging.getLogger(__name__)

#: A control tick never needs longer than this.
TICK_LIMIT_MS = 60_000


@dramatiq.actor(actor_name="heartbeat", queue_name=CONTROL_QUEUE, max_retries=0, time_limit=TICK_LIMIT_MS)
@fresh_tick
def heartbeat(slot_ts: float) -> None:
    """Tell the cloud the node is alive."""
    send_heartbeat(runtime)


@dramatiq.actor(actor_name="vpn_check", queue_name=CONTROL_QUEUE, max_retries=0, time_limit=TICK_LIMIT_MS)
@fresh_tick
@one_at_a_time
def vpn_check(slot_ts: float) -> None:
    """Check the tunnel and probe targets; store the VPN state with an expiry (one check at a time)."""
    from coda_bridge.vpn.guard import VpnGuard

    VpnGuard(settings, runtime.state).check()
