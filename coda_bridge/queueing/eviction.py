"""A broker Redis that evicts keys, named: its ``maxmemory-policy``, and the keys it did evict.

The node's claims, records and entry index are what keep a job from
running twice; a policy other than ``noeviction`` drops them when memory
runs short, and jobs run twice (docs/operations.md, "Sizing the broker").
The policy is read with ``CONFIG GET``, or from ``INFO memory`` where a
managed Redis refuses ``CONFIG``; ``INFO stats``' ``evicted_keys`` rising
says it did evict.  The bridge watches on a clock and logs; the probes app
shows the policy in ``/ready`` and exports both in ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..replies import as_text
from .sizing import SAFE_POLICY

__all__ = ["EVICTION_CHECK_INTERVAL_SEC", "Eviction", "EvictionWatch", "read_eviction"]

logger = logging.getLogger(__name__)

#: How often the broker's policy and evicted keys are read again.
EVICTION_CHECK_INTERVAL_SEC = 30.0
#: What to do about a broker that evicts.
EVICTION_ADVICE = (
    f"set maxmemory-policy {SAFE_POLICY} and size maxmemory as docs/operations.md says "
    "(a full broker then refuses writes, which the node waits out)"
)


@dataclass(frozen=True)
class Eviction:
    """The broker's policy and its ``evicted_keys`` since it started (each ``None`` when unknown)."""

    policy: str | None
    evicted_keys: int | None

    @property
    def evicting(self) -> bool:
        """Whether the policy drops keys under memory pressure."""
        return self.policy is not None and self.policy != SAFE_POLICY


def read_eviction(client: redis.Redis) -> Eviction:
    """The broker's policy and evicted keys; ``redis.RedisError`` when it does not answer."""
    policy: str | None = None
    try:
        reply: Any = client.config_get("maxmemory-policy")
        value = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        policy = str(as_text(value)) if value else None
    except redis.ResponseError:  # CONFIG refused or renamed (a managed Redis): INFO says it too
        policy = None
    if policy is None:
        memory: Any = client.info("memory")
        policy = str(memory["maxmemory_policy"]) if memory.get("maxmemory_policy") else None
    stats: Any = client.info("stats")
    evicted = stats.get("evicted_keys")
    return Eviction(policy, int(evicted) if evicted is not None else None)


class EvictionWatch(Collector):
    """Reads the broker's :class:`Eviction` at most once per interval; with ``log``, names it in WARNINGs.

    One WARNING line when the policy is found to evict (again after it
    changed), one each time ``evicted_keys`` rose since the last reading.
    As a Prometheus collector it exports ``coda_broker_evicting`` (1 while
    the policy evicts, by policy) and ``coda_broker_evicted_keys_total``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        log: bool = True,
        interval_sec: float = EVICTION_CHECK_INTERVAL_SEC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.log = log
        self.interval_sec = interval_sec
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Eviction | None = None
        self._read_at = -float("inf")
        self._warned_policy: str | None = None

    def __call__(self) -> Eviction:
        """The broker's eviction state, read again once the interval passed; ``redis.RedisError`` if down."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._read_at < self.interval_sec:
                return self._last
            found = read_eviction(self.client)
            if self.log:
                self._note(found, self._last, now - self._read_at)
            self._last, self._read_at = found, now
            return found

    def watch(self, stop: threading.Event) -> None:
        """Read now and then once per interval until ``stop`` is set (a thread's target)."""
        while True:
            try:
                self()
            except redis.RedisError as exc:  # the broker does not answer: other parts say so
                logger.debug("Broker eviction not read (%s).", exc)
            if stop.wait(self.interval_sec):
                return

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        found = self()
        gauge = GaugeMetricFamily(
            "coda_broker_evicting",
            "1 while the local broker's maxmemory-policy evicts keys (jobs can run twice), by policy",
            labels=["policy"],
        )
        gauge.add_metric([found.policy or "unknown"], 1.0 if found.evicting else 0.0)
        yield gauge
        if found.evicted_keys is not None:
            counter = CounterMetricFamily(
                "coda_broker_evicted_keys", "Keys the local broker evicted since it started (INFO stats)"
            )
            counter.add_metric([], float(found.evicted_keys))
            yield counter

    def _note(self, found: Eviction, last: Eviction | None, since_sec: float) -> None:
        if found.evicting and found.policy != self._warned_policy:
            logger.warning(
                "The local broker evicts keys (maxmemory-policy %s, %s keys evicted since it started): "
                "evicted claims and records let jobs run twice; %s.",
                found.policy,
                "?" if found.evicted_keys is None else found.evicted_keys,
                EVICTION_ADVICE,
            )
            self._warned_policy = found.policy
        elif not found.evicting and self._warned_policy is not None and found.policy is not None:
            logger.info("The local broker no longer evicts keys (maxmemory-policy %s).", found.policy)
            self._warned_policy = None
        before = last.evicted_keys if last is not None else None
        if found.evicted_keys is not None and before is not None and found.evicted_keys > before:
            logger.warning(
                "The local broker evicted %d keys in the last %.0f s (maxmemory-policy %s): "
                "claims and records may be gone, and jobs can run twice; %s.",
                found.evicted_keys - before,
                since_sec,
                found.policy or "unknown",
                EVICTION_ADVICE,
            )
