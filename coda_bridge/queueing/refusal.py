"""A broker Redis that answers but refuses writes, told apart from one that does not answer.

Redis refuses writes with an error reply, not a lost connection: ``OOM`` at
``maxmemory`` under ``noeviction``, ``READONLY`` on a replica after a
failover, ``LOADING`` while it reads its data back, ``MISCONF`` when it
cannot persist.  These pass when memory, the primary or the disk come back,
so they are outages the node waits out (:func:`refusal` names them), and
``/ready`` says which one it is (:class:`WriteProbe`).  A process logs an
outage once, not once per refused attempt (:class:`RefusalNotice`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["REFUSAL_CODES", "RefusalNotice", "WriteProbe", "refusal", "refusal_advice"]

logger = logging.getLogger(__name__)

#: Error codes of a Redis that refuses writes for a while.
REFUSAL_CODES = frozenset({"OOM", "READONLY", "LOADING", "MISCONF"})
#: The gauge a probe exports.
REFUSING_METRIC = "coda_broker_refusing_writes"
#: What to do about an OOM refusal.
OOM_ADVICE = "free memory or raise maxmemory, see docs/operations.md"
#: What to do about each refusal.
ADVICE = {
    "OOM": OOM_ADVICE,
    "READONLY": "broker_url names a replica now (a failover?): point it at the primary",
    "LOADING": "it is loading its data after a restart, and takes writes once done",
    "MISCONF": "it cannot persist: free its disk or fix its dir, see its log",
}
#: How long the key written by a probe lives.
PROBE_TTL_SEC = 60
#: A refusal this long after the one before begins a new outage (logged again).
REFUSAL_QUIET_SEC = 60.0

# redis-py names the failed command of a pipeline before the reply: the reply is what tells the cause
_PIPELINE = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ")
# Redis 6.2 reports a refusal inside a Lua script (dramatiq's dispatch) as "ERR Error running script ... -OOM"
_IN_SCRIPT = re.compile(r"-(OOM|READONLY|LOADING|MISCONF) ")


def refusal(exc: BaseException) -> str | None:
    """The reply of a Redis error that is a refusal of writes, in one line; None for any other error."""
    if not isinstance(exc, redis.RedisError):
        return None
    text = _PIPELINE.sub("", " ".join(str(exc).split()), count=1)
    code = getattr(exc, "status_code", None)
    if code in REFUSAL_CODES:
        return f"{code} {text}"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return f"OOM {text}"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return f"READONLY {text}"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return f"LOADING {text}"
    found = _IN_SCRIPT.search(text)
    if found:
        return text[found.start() + 1 :]
    return None


def refusal_advice(reason: str) -> str:
    """What to do about a refusal (``reason`` as :func:`refusal` gives it)."""
    return ADVICE.get(refusal_code(reason), "see docs/operations.md")


class RefusalNotice:
    """Whether a refusal is news: the first of an outage is, one within ``quiet_sec`` of the last is not.

    :func:`~coda_bridge.queueing.redis_broker.create_broker` makes one per
    process and gives it to what logs refusals there (dramatiq's failure
    lines, its retries), so an outage is one WARNING line, not one per attempt.
    """

    def __init__(self, quiet_sec: float = REFUSAL_QUIET_SEC, clock: Callable[[], float] = time.monotonic):
        self.quiet_sec = quiet_sec
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def news(self) -> bool:
        """Note a refusal now; True when it begins an outage (nothing was refused for ``quiet_sec``)."""
        with self._lock:
            now = self.clock()
            new = self._last is None or now - self._last > self.quiet_sec
            self._last = now
            return new


class WriteProbe(Collector):
    """Asks the broker to take a small write: why it refuses, in one line, or None.

    One WARNING line says so when a refusal starts, one INFO line when it
    ends.  Other Redis errors are raised.  As a Prometheus collector it
    exports ``coda_broker_refusing_writes`` (1 while refused, by the cause).
    """

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.refusing: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        try:
            self.client.set(self.key, "1", ex=PROBE_TTL_SEC)
        except redis.RedisError as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            message = f"the local broker refuses writes: {reason}"
            if reason.startswith("OOM"):
                message += f" ({_memory(self.client)}; {OOM_ADVICE})"
            self._note(message)
            return message
        self._note(None)
        return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            REFUSING_METRIC,
            "1 while the local broker Redis answers but refuses writes (OOM, READONLY, LOADING, MISCONF)",
            labels=["cause"],
        )
        try:
            reason = self()
        except redis.RedisError:  # it does not answer: not a refusal (/metrics says so)
            reason = None
        cause = refusal_code(reason) if reason else ""
        gauge.add_metric([cause], 1.0 if reason else 0.0)
        yield gauge

    def _note(self, message: str | None) -> None:
        with self._lock:
            if message is not None and self.refusing is None:
                logger.warning("%s", message)
            elif message is None and self.refusing is not None:
                logger.info("The local broker takes writes again.")
            self.refusing = message


def refusal_code(reason: str) -> str:
    """The error code a probe's reason names (``OOM``, ``READONLY``, ...)."""
    found = re.search(r"\b(OOM|READONLY|LOADING|MISCONF)\b", reason)
    return found.group(1) if found else "other"


def _memory(client: redis.Redis) -> str:
    """Its memory use against its limit and policy, in a few words (best effort)."""
    try:
        info: Any = client.info("memory")
    except redis.RedisError:
        return "memory figures unavailable"
    return (
        f"used_memory {info.get('used_memory_human', '?')} of maxmemory {info.get('maxmemory_human', '?')}, "
        f"policy {info.get('maxmemory_policy', '?')}"
    )
