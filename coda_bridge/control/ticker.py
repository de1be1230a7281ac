"""Periodic ticks for the control queue, exactly one per interval however many tickers run.

dramatiq has no scheduler.  Each ticker wakes at every interval boundary
of the wall clock and tries to take that slot's key in the broker Redis
(``SET NX``); only the winner enqueues the tick.  A tick expires at the
end of its slot: a control worker that gets it later skips it (the
:class:`~coda_bridge.queueing.middleware.StaleTicks` middleware: acknowledged
and logged, not dead-lettered), so a node that stalled does not fire a
burst of stale heartbeats when it wakes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis

from ..queueing import messages
from ..queueing.redis_broker import CodaBroker
from ..state.broker_keys import tick_key

__all__ = ["Tick", "Ticker", "one_at_a_time", "tick_message"]

logger = logging.getLogger(__name__)

#: Shortest life of a slot key (a ticker whose clock runs a little behind must still see it).
MIN_LEASE_MS = 1000


@dataclass(frozen=True)
class Tick:
    """A periodic control message: the actor it calls and its interval."""

    actor_name: str
    interval_sec: float


def tick_message(tick: Tick, slot: int) -> dramatiq.Message[Any]:
    """The control message of ``slot``: it carries the slot's start and the moment it goes stale."""
    slot_ts = slot * tick.interval_sec
    return messages.tick_message(tick.actor_name, slot_ts, slot_ts + tick.interval_sec)


def one_at_a_time(func: Callable[..., None]) -> Callable[..., None]:
    """Skip a tick while this process still runs the previous one of the same task.

    A VPN check whose probes time out can outlast its interval; overlapping
    checks would take every control thread and leave none for the heartbeat.
    """
    running = threading.Lock()

    @functools.wraps(func)
    def run_alone(slot_ts: float, expires_at: float | None = None) -> None:
        if not running.acquire(blocking=False):
            logger.warning("Skipped a %s tick: the previous one is still running.", func.__name__)
            return
        try:
            func(slot_ts, expires_at)
        finally:
            running.release()

    return run_alone


class Ticker(threading.Thread):
    """Sends each :class:`Tick` to the control queue once per interval slot."""

    def __init__(self, broker: CodaBroker, qpu_id: str, ticks: list[Tick]) -> None:
        super().__init__(name="coda-ticker", daemon=True)
        self.broker = broker
        self.qpu_id = qpu_id
        self.ticks = ticks
        # not ``_stop``: threading.Thread has a method of that name that join() calls
        self._stopping = threading.Event()
        self._next = {tick.actor_name: 0 for tick in ticks}
        #: Ticks this ticker sent, and slots another ticker had taken first.
        self.sent = 0
        self.lost = 0

    def stop(self) -> None:
        self._stopping.set()

    def tick_once(self, now: float | None = None) -> list[str]:
        """Send every tick whose slot has come and that no other ticker took; return their names."""
        now = time.time() if now is None else now
        sent = []
        for tick in self.ticks:
            slot = int(now // tick.interval_sec)
            if slot < self._next[tick.actor_name]:
                continue
            self._next[tick.actor_name] = slot + 1
            lease_ms = max(int(tick.interval_sec * 2000), MIN_LEASE_MS)
            key = tick_key(self.qpu_id, tick.actor_name, slot)
            if not self.broker.client.set(key, "1", nx=True, px=lease_ms):
                self.lost += 1
                continue
            self.broker.enqueue(tick_message(tick, slot))
            sent.append(tick.actor_name)
            self.sent += 1
        return sent

    def _sleep_time(self) -> float:
        now = time.time()
        return max(0.0, min(self._next[t.actor_name] * t.interval_sec for t in self.ticks) - now)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick_once()
            except redis.RedisError as exc:
                logger.warning("Ticker cannot reach the broker: %s", exc)
                self._stopping.wait(1.0)
                continue
            except Exception:
                # a dead ticker thread would silence the heartbeat while the bridge looks fine
                logger.exception("Ticker failed to send a tick; going on.")
                self._stopping.wait(1.0)
                continue
            self._stopping.wait(self._sleep_time() + 0.001)
