"""Periodic ticks for the control queue, exactly one per interval however many tickers run.

dramatiq has no scheduler.  Each ticker wakes at every interval boundary
of the wall clock and tries to take that slot's key in the broker Redis
(``SET NX``); only the winner enqueues the tick.  Ticks carry an age
limit of one interval, so a node that stalled does not fire a burst of
stale heartbeats when it wakes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis

from .broker import CONTROL_QUEUE, CodaBroker
from .keys import tick_key

__all__ = ["Tick", "Ticker"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    """A periodic control message: the actor it calls and its interval."""

    actor_name: str
    interval_sec: float


class Ticker(threading.Thread):
    """Sends each :class:`Tick` to the control queue once per interval slot."""

    def __init__(self, broker: CodaBroker, qpu_id: str, ticks: list[Tick]) -> None:
        super().__init__(name="coda-ticker", daemon=True)
        self.broker = broker
        self.qpu_id = qpu_id
        self.ticks = ticks
        self._stop = threading.Event()
        self._next = {tick.actor_name: 0 for tick in ticks}
        self.sent = 0

    def stop(self) -> None:
        self._stop.set()

    def tick_once(self, now: float | None = None) -> list[str]:
        """Send every tick whose slot has come and that no other ticker took; return their names."""
        now = time.time() if now is None else now
        sent = []
        for tick in self.ticks:
            slot = int(now // tick.interval_sec)
            if slot < self._next[tick.actor_name]:
                continue
            self._next[tick.actor_name] = slot + 1
            lease_ms = max(int(tick.interval_sec * 2000), 1000)
            key = tick_key(self.qpu_id, tick.actor_name, slot)
            if not self.broker.client.set(key, "1", nx=True, px=lease_ms):
                continue
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=CONTROL_QUEUE,
                actor_name=tick.actor_name,
                args=(slot * tick.interval_sec,),
                kwargs={},
                options={"max_age": int(tick.interval_sec * 1000)},
            )
            self.broker.enqueue(message)
            sent.append(tick.actor_name)
            self.sent += 1
        return sent

    def _sleep_time(self) -> float:
        now = time.time()
        return max(0.0, min(self._next[t.actor_name] * t.interval_sec for t in self.ticks) - now)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_once()
            except redis.RedisError as exc:
                logger.warning("Ticker cannot reach the broker: %s", exc)
                self._stop.wait(1.0)
                continue
            self._stop.wait(self._sleep_time() + 0.001)
