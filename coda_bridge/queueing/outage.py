"""The broker Redis not answering, said in one line that names the fix, however the node was launched.

A broker that is down is an expected condition (Redis not started yet, a
restart, a wrong ``CODA_BROKER_URL``), not a bug: the bridge stops with
:class:`BrokerUnavailable` (one line, then its supervisor restarts it), and
:class:`BrokerOutageLog` turns the CRITICAL line that each of dramatiq's
consumers logs every 3 s meanwhile into one WARNING a minute per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ..errors import CodaError

__all__ = [
    "FIX",
    "BrokerOutageLog",
    "BrokerUnavailable",
    "broker_unavailable",
    "install_outage_log",
    "shown_broker",
]

#: What to do, at the end of every line that says the broker does not answer.
FIX = "start Redis or set CODA_BROKER_URL"
#: One outage line per process at most this often, in seconds.
OUTAGE_LOG_EVERY_SEC = 60.0
#: How often dramatiq restarts a consumer that lost the broker, in seconds (dramatiq's own constant).
CONSUMER_RETRY_SEC = 3

_CONNECTION_ERROR = "Consumer encountered a connection error"
_RESTARTING = "Restarting consumer in"
_CONSUMER_LOGGERS = "dramatiq.worker.ConsumerThread"


class BrokerUnavailable(CodaError):
    """The broker Redis does not answer; the message names it (never its password) and the fix."""


def shown_broker(client: redis.Redis) -> str:
    """Where ``client`` connects: ``host:port/db``, a socket path or a Sentinel service; no password."""
    pool: Any = client.connection_pool
    kwargs = pool.connection_kwargs
    service = getattr(pool, "service_name", None)
    if service:  # redis-py's SentinelConnectionPool: the primary changes, the service stays
        hosts = ",".join(
            f"{s.connection_pool.connection_kwargs.get('host')}:"
            f"{s.connection_pool.connection_kwargs.get('port')}"
            for s in pool.sentinel_manager.sentinels
        )
        return f"{hosts}/{service}/{kwargs.get('db', 0)} (Sentinel)"
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def broker_unavailable(client: redis.Redis, exc: redis.RedisError) -> BrokerUnavailable:
    """The one-line error for ``exc``, met on the broker ``client``."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return BrokerUnavailable(f"the broker Redis at {shown_broker(client)} does not answer ({reason}); {FIX}")


class BrokerOutageLog(logging.Filter):
    """On a handler: dramatiq's consumer connection errors become one WARNING naming the fix, once a minute.

    The lines about restarting the consumer go while an outage is being reported; every
    other record passes untouched.
    """

    def __init__(
        self,
        where: str,
        every_sec: float = OUTAGE_LOG_EVERY_SEC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.where = where
        self.every_sec = every_sec
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_CONSUMER_LOGGERS) or not isinstance(record.msg, str):
            return True
        if record.msg.startswith(_RESTARTING):
            return not self._reporting()
        if not record.msg.startswith(_CONNECTION_ERROR):
            return True
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.every_sec:
                return False
            self._last = now
        error = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        reason = " ".join(str(error).split())
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.msg = "The broker Redis at %s does not answer (%s); %s. The workers try again every %d s."
        record.args = (self.where, reason, FIX, CONSUMER_RETRY_SEC)
        return True

    def _reporting(self) -> bool:
        with self._lock:
            return self._last is not None and self.clock() - self._last < self.every_sec


def install_outage_log(where: str) -> None:
    """Put a :class:`BrokerOutageLog` on every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, BrokerOutageLog) for f in handler.filters):
            handler.addFilter(BrokerOutageLog(where))
