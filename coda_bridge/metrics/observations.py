"""dramatiq's own metrics, kept in the broker Redis so ``/metrics`` reads them at scrape time.

Every process of the node (bridge, workers on any host, the probes app)
shares the broker Redis, so a metric written there is right whichever
gunicorn worker answers a scrape (durations are :mod:`.histograms`).

:class:`DramatiqMetrics` is dramatiq's Prometheus middleware with another
sink: dramatiq's hooks decide what is counted (messages, errors, retries,
dead letters, messages in progress, durations) under dramatiq's own metric
names, but the values go to this Redis instead of prometheus_client files
on each worker host, and no exposition server is forked per worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from dramatiq.common import current_millis
from dramatiq.middleware.prometheus import Prometheus
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..replies import as_text
from ..state.broker_keys import dramatiq_counters_key, dramatiq_live_key, heartbeats_key
from .histograms import DRAMATIQ_DURATION, FIELD_SEP, Histograms

__all__ = [
    "DramatiqMetrics",
    "DramatiqReader",
]

logger = logging.getLogger(__name__)

#: A process's in-progress counts outlive it this long at most (they are read only while it heartbeats).
LIVE_TTL_SEC = 86_400
#: How often a process adds its buffered dramatiq metrics to the broker Redis.
FLUSH_INTERVAL_SEC = 0.25
#: A metric write that fails (the broker Redis is away) is logged at most once per this many seconds.
WRITE_WARNING_INTERVAL_SEC = 60.0


#: dramatiq's counters: attribute of its middleware, metric name, help text (as dramatiq declares them).
_DRAMATIQ_COUNTERS = (
    ("total_messages", "dramatiq_messages_total", "The total number of messages processed."),
    ("total_errored_messages", "dramatiq_message_errors_total", "The total number of errored messages."),
    ("total_retried_messages", "dramatiq_message_retries_total", "The total number of retried messages."),
    (
        "total_rejected_messages",
        "dramatiq_message_rejects_total",
        "The total number of dead-lettered messages.",
    ),
)
#: dramatiq's gauges of work a live worker process holds, summed over the processes that still heartbeat.
_DRAMATIQ_GAUGES = (
    ("inprogress_messages", "dramatiq_messages_inprogress", "The number of messages in progress."),
    (
        "inprogress_delayed_messages",
        "dramatiq_delayed_messages_inprogress",
        "The number of delayed messages in memory.",
    ),
)
#: dramatiq's label names for every one of its metrics.
_DRAMATIQ_LABELS = ("queue_name", "actor_name")


class _Sink:
    """The middleware's metrics: a buffer in the process, flushed to the broker Redis in the background.

    dramatiq's hooks run on every message, so they only add to an in-memory
    buffer (microseconds); a daemon thread adds the buffer to Redis every
    :data:`FLUSH_INTERVAL_SEC` in one transaction, increments of one series
    summed.  The buffer holds one entry per series (metric, queue, actor,
    bucket), so it stays small, and a flush that fails keeps it for the next
    one.  A process killed outright loses at most one interval of counts.
    """

    def __init__(self, qpu_id: str, flush_interval_sec: float | None = None) -> None:
        self.qpu_id = qpu_id
        self.flush_interval_sec = FLUSH_INTERVAL_SEC if flush_interval_sec is None else flush_interval_sec
        self.client: redis.Redis | None = None
        self.process_id = ""
        self.histograms: Histograms | None = None
        self._warned_at = -math.inf
        self._reset()
        _SINKS.add(self)

    def _reset(self) -> None:
        """A fresh buffer and no flusher (at creation, and in a forked child, where only one thread runs)."""
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._sums: dict[tuple[str, str], float] = {}
        self._flusher: threading.Thread | None = None

    def bind(self, broker: Any) -> None:
        """Write through ``broker``'s Redis client, as its process; a broker without Redis writes nothing."""
        client = getattr(broker, "client", None)
        if self.client is None and isinstance(client, redis.Redis):
            self.process_id = str(broker.broker_id)
            self.histograms = Histograms(client, self.qpu_id, {DRAMATIQ_DURATION.name: DRAMATIQ_DURATION})
            self.client = client

    @property
    def counters_key(self) -> str:
        return dramatiq_counters_key(self.qpu_id)

    def live_key(self, process_id: str | None = None) -> str:
        return dramatiq_live_key(self.qpu_id, process_id or self.process_id)

    def add(self, key: str, field: str, amount: int = 1, *, sum_field: str = "", total: float = 0.0) -> None:
        """Add ``amount`` to ``field`` of hash ``key``, ``total`` to ``sum_field``; nothing before a bind."""
        if self.client is None:
            return
        with self._lock:
            self._counts[key, field] = self._counts.get((key, field), 0) + amount
            if sum_field:
                self._sums[key, sum_field] = self._sums.get((key, sum_field), 0.0) + total
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._run, name="coda-metrics", daemon=True)
                self._flusher.start()

    def observe(self, labels: Sequence[str], value: float) -> None:
        """One observation of dramatiq's duration histogram (milliseconds)."""
        if self.histograms is not None:
            key, bucket, sum_field = self.histograms.fields(DRAMATIQ_DURATION.name, value, labels)
            self.add(key, bucket, sum_field=sum_field, total=float(value))

    def flush(self) -> bool:
        """Add the buffer to Redis in one transaction; False (the buffer kept) when Redis did not take it."""
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = {}, {}
        if self.client is None or not (counts or sums):
            return True
        pipe = self.client.pipeline(transaction=True)  # a scrape sees a bucket and its sum together
        for (key, field), amount in counts.items():
            pipe.hincrby(key, field, amount)
        for (key, field), total in sums.items():
            pipe.hincrbyfloat(key, field, total)
        if any(key == self.live_key() for key, _ in counts):
            pipe.expire(self.live_key(), LIVE_TTL_SEC)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            with self._lock:  # back into the buffer: one entry per series, so it cannot grow without bound
                for entry, amount in counts.items():
                    self._counts[entry] = self._counts.get(entry, 0) + amount
                for entry, total in sums.items():
                    self._sums[entry] = self._sums.get(entry, 0.0) + total
            now = time.monotonic()
            if now - self._warned_at >= WRITE_WARNING_INTERVAL_SEC:
                self._warned_at = now
                logger.warning(
                    "dramatiq metrics not written to the broker Redis yet (%s); kept for later.", exc
                )
            return False
        return True

    def forget_process(self) -> None:
        """At worker shutdown: the last counts go out, and this process holds nothing in progress any more."""
        self.flush()
        if self.client is not None:
            with contextlib.suppress(redis.RedisError):
                self.client.delete(self.live_key())

    def _run(self) -> None:
        while True:
            time.sleep(self.flush_interval_sec)
            self.flush()


#: Every sink of this process, so a forked child starts with empty buffers and no flusher.
_SINKS: weakref.WeakSet[_Sink] = weakref.WeakSet()


def _after_fork() -> None:
    for sink in list(_SINKS):
        sink._reset()


os.register_at_fork(after_in_child=_after_fork)


class _Series:
    """One series of a counter or a live gauge: what dramatiq's hooks call ``inc``/``dec`` on."""

    def __init__(self, sink: _Sink, field: str, live: bool) -> None:
        self.sink, self.field, self.live = sink, field, live

    def inc(self, amount: int = 1) -> None:
        self.sink.add(self.sink.live_key() if self.live else self.sink.counters_key, self.field, amount)

    def dec(self, amount: int = 1) -> None:
        self.inc(-amount)


class _Metric:
    """A stand-in for a prometheus_client metric with labels, as dramatiq's middleware uses one."""

    def __init__(self, sink: _Sink, name: str, *, live: bool = False) -> None:
        self.sink, self.name, self.live = sink, name, live

    def labels(self, *values: str) -> _Series:
        return _Series(self.sink, FIELD_SEP.join([self.name, *map(str, values)]), self.live)


class _Duration:
    """The stand-in for dramatiq's duration histogram."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink

    def labels(self, *values: str) -> _Duration._Child:
        return _Duration._Child(self.sink, values)

    class _Child:
        def __init__(self, sink: _Sink, values: Sequence[str]) -> None:
            self.sink, self.values = sink, [str(v) for v in values]

        def observe(self, value: float) -> None:
            self.sink.observe(self.values, value)


class DramatiqMetrics(Prometheus):
    """dramatiq's Prometheus middleware, its metrics in the broker Redis and served by ``/metrics``.

    What is counted and when is dramatiq's (its hooks run unchanged); only
    the storage differs.  dramatiq's own version keeps prometheus_client
    multiprocess files in one directory per host and forks an HTTP server
    on port 9191 in every ``dramatiq`` command, which clashes when several
    run on one host and leaves a scrape target per worker host.  Here every
    worker, on any host, writes to the broker Redis, and the probes app's
    ``/metrics`` serves the sums under dramatiq's names.
    """

    def __init__(self, qpu_id: str) -> None:
        super().__init__()
        self.sink = _Sink(qpu_id)
        for attribute, name, _ in _DRAMATIQ_COUNTERS:
            setattr(self, attribute, _Metric(self.sink, name))
        for attribute, name, _ in _DRAMATIQ_GAUGES:
            setattr(self, attribute, _Metric(self.sink, name, live=True))
        setattr(self, "message_durations", _Duration(self.sink))  # noqa: B010 (dramatiq types it Histogram)

    @property
    def forks(self) -> list[Any]:
        """No exposition server: ``/metrics`` of the probes app serves these metrics."""
        return []

    def after_process_boot(self, broker: Any) -> None:
        self.sink.bind(broker)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.sink.forget_process()

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.sink.bind(broker)  # a process that only enqueues (the bridge) never boots a worker
        super().after_enqueue(broker, message, delay)

    def before_delay_message(self, broker: Any, message: Any) -> None:
        self.sink.bind(broker)
        super().before_delay_message(broker, message)

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.sink.bind(broker)  # a worker run in-process (tests, embedding) has no process boot
        super().before_process_message(broker, message)


class DramatiqReader:
    """Reads what :class:`DramatiqMetrics` wrote, as Prometheus families, for the probes app."""

    def __init__(self, client: redis.Redis, qpu_id: str, namespace: str, heartbeat_timeout_ms: int) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.heartbeats_key = heartbeats_key(namespace)
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.histograms = Histograms(client, qpu_id, {DRAMATIQ_DURATION.name: DRAMATIQ_DURATION})

    def families(self) -> list[Any]:
        """dramatiq's counters, its in-progress gauges summed over live worker processes, its durations."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(dramatiq_counters_key(self.qpu_id))
        # dramatiq's own heartbeats: a process whose broker has not talked to Redis lately is gone
        pipe.zrangebyscore(self.heartbeats_key, current_millis() - self.heartbeat_timeout_ms, "+inf")
        raw_counters, live_ids = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for process_id in live_ids:
            pipe.hgetall(dramatiq_live_key(self.qpu_id, str(as_text(process_id))))
        live = pipe.execute() if live_ids else []
        values: dict[str, dict[tuple[str, ...], float]] = {}
        for field, value in raw_counters.items():
            name, labels = _split(field)
            values.setdefault(name, {})[labels] = float(str(as_text(value)))
        seen = set(values.get("dramatiq_messages_total", {}))
        sums: dict[str, dict[tuple[str, ...], float]] = {}
        for held in live:
            for field, value in held.items():
                name, labels = _split(field)
                series = sums.setdefault(name, {})
                series[labels] = series.get(labels, 0.0) + float(str(as_text(value)))
        families: list[Any] = []
        for _, name, documentation in _DRAMATIQ_COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=list(_DRAMATIQ_LABELS))
            for labels, value in sorted(values.get(name, {}).items()):
                counter.add_metric(list(labels), value)
            families.append(counter)
        for _, name, documentation in _DRAMATIQ_GAUGES:
            gauge = GaugeMetricFamily(name, documentation, labels=list(_DRAMATIQ_LABELS))
            held_now = sums.get(name, {})
            for labels in sorted(seen | set(held_now)):
                gauge.add_metric(list(labels), max(0.0, held_now.get(labels, 0.0)))
            families.append(gauge)
        families.extend(self.histograms.families())
        return families


def _split(field: Any) -> tuple[str, tuple[str, ...]]:
    """A dramatiq metric field: its metric name and its label values."""
    name, *labels = str(as_text(field)).split(FIELD_SEP)
    return name, tuple(labels)
