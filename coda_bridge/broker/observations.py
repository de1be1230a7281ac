"""Histograms and dramatiq's own metrics, kept in the broker Redis so ``/metrics`` reads them at scrape time.

Every process of the node (bridge, workers on any host, the probes app)
shares the broker Redis, so a metric written there is right whichever
gunicorn worker answers a scrape.  Histograms are bucket counters in one
hash per metric: an observation adds one to its bucket and to the sum in
one transaction, and a scrape adds the buckets up.

:class:`DramatiqMetrics` is dramatiq's Prometheus middleware with another
sink: dramatiq's hooks decide what is counted (messages, errors, retries,
dead letters, messages in progress, durations) under dramatiq's own metric
names, but the values go to this Redis instead of prometheus_client files
on each worker host, and no exposition server is forked per worker.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq.common import current_millis
from dramatiq.middleware.prometheus import Prometheus
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from ..replies import as_text

__all__ = [
    "DELIVERY_ATTEMPTS",
    "DRAMATIQ_DURATION",
    "JOB_DURATION",
    "NODE_HISTOGRAMS",
    "WEBHOOK_DURATION",
    "XADD_TO_RESULT",
    "DramatiqMetrics",
    "DramatiqReader",
    "HistogramSpec",
    "Histograms",
    "entry_time_sec",
]

logger = logging.getLogger(__name__)

#: Separates label values (and the bucket index) inside a hash field; label values never contain it.
_SEP = "\x1f"
#: A process's in-progress counts outlive it this long at most (they are read only while it heartbeats).
LIVE_TTL_SEC = 86_400
#: A metric write that fails (the broker Redis is away) is logged at most once per this many seconds.
WRITE_WARNING_INTERVAL_SEC = 60.0


@dataclass(frozen=True)
class HistogramSpec:
    """A Prometheus histogram: its name, help text, label names and bucket upper bounds (no ``+Inf``)."""

    name: str
    documentation: str
    buckets: tuple[float, ...]
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets:
            raise ValueError(f"{self.name}: buckets must be distinct and ascending")


#: Seconds a job spent in the executor call that ran it (a batch: each of its jobs, the batch's time).
JOB_DURATION = HistogramSpec(
    "coda_bridge_job_duration_seconds",
    "Seconds a job spent in the executor call that ran it.",
    (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
#: Seconds of one result POST to the cloud, by outcome (accepted, retryable, refused).
WEBHOOK_DURATION = HistogramSpec(
    "coda_bridge_webhook_duration_seconds",
    "Seconds of one result delivery request, by outcome (accepted, retryable, refused).",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    ("outcome",),
)
#: Seconds from the cloud's XADD of a job (its stream entry id) to the cloud accepting its result.
XADD_TO_RESULT = HistogramSpec(
    "coda_bridge_xadd_to_result_seconds",
    "Seconds from the job's XADD to the cloud accepting its result, by result status.",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400),
    ("status",),
)
#: Delivery attempts a result took before it ended (delivered, refused or dead-lettered).
DELIVERY_ATTEMPTS = HistogramSpec(
    "coda_bridge_delivery_attempts",
    "Delivery attempts a result took before it was delivered, refused or dead-lettered.",
    (1, 2, 3, 5, 8, 13, 21, 34),
    ("outcome",),
)
#: The node's own histograms, by name.
NODE_HISTOGRAMS: Mapping[str, HistogramSpec] = {
    spec.name: spec for spec in (JOB_DURATION, WEBHOOK_DURATION, XADD_TO_RESULT, DELIVERY_ATTEMPTS)
}
#: dramatiq's ``dramatiq_message_duration_milliseconds``, with the buckets of dramatiq's middleware.
DRAMATIQ_DURATION = HistogramSpec(
    "dramatiq_message_duration_milliseconds",
    "The time spent processing messages.",
    (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000, 600000, 900000),
    ("queue_name", "actor_name"),
)


def entry_time_sec(entry_id: str) -> float | None:
    """The XADD time (Unix seconds) a stream entry id ``<ms>-<seq>`` carries, or ``None`` for another id."""
    millis, _, seq = str(entry_id).partition("-")
    if not (millis.isdigit() and seq.isdigit()):
        return None
    return int(millis) / 1000


def _node_key(qpu_id: str, name: str) -> str:
    return f"coda-bridge:{qpu_id}:node:{name}"


class Histograms:
    """Histograms of one QPU in the broker Redis: :meth:`observe` anywhere, :meth:`families` at scrape."""

    def __init__(
        self, client: redis.Redis, qpu_id: str, specs: Mapping[str, HistogramSpec] = NODE_HISTOGRAMS
    ) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.specs = dict(specs)

    def key(self, name: str) -> str:
        return _node_key(self.qpu_id, f"histogram:{name}")

    def observe(
        self,
        name: str,
        value: float,
        labels: Mapping[str, str] | None = None,
        *,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Add one observation: on ``pipe`` it rides that round trip, else it is a transaction of its own."""
        spec = self.specs[name]
        given = dict(labels or {})
        if set(given) != set(spec.labels):
            raise ValueError(f"{name} takes the labels {list(spec.labels)}, not {sorted(given)}")
        if math.isnan(value):
            raise ValueError(f"{name}: cannot observe NaN")
        values = [str(given[label]) for label in spec.labels]
        if any(_SEP in v for v in values):
            raise ValueError(f"{name}: a label value contains the field separator")
        bucket = bisect.bisect_left(spec.buckets, value)  # the first bound >= value; len(buckets) is +Inf
        series = _SEP.join(values)
        target = self.client.pipeline(transaction=True) if pipe is None else pipe
        target.hincrby(self.key(name), f"{bucket}{_SEP}{series}", 1)
        target.hincrbyfloat(self.key(name), f"sum{_SEP}{series}", float(value))
        if pipe is None:
            target.execute()

    def observe_since_entry(
        self,
        name: str,
        entry_id: str,
        labels: Mapping[str, str] | None = None,
        *,
        now: float | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> float | None:
        """Observe the seconds since the XADD of ``entry_id`` and return them (``None``: the id has no time).

        A negative span (the cloud's clock ahead of this host's) counts as 0.
        """
        added = entry_time_sec(entry_id)
        if added is None:
            return None
        seconds = max(0.0, (time.time() if now is None else now) - added)
        self.observe(name, seconds, labels, pipe=pipe)
        return seconds

    def families(self) -> list[HistogramMetricFamily]:
        """Every histogram, cumulative, in one round trip; an unlabelled one with no data reads as zeros."""
        pipe = self.client.pipeline(transaction=False)
        specs = list(self.specs.values())
        for spec in specs:
            pipe.hgetall(self.key(spec.name))
        return [_family(spec, raw) for spec, raw in zip(specs, pipe.execute(), strict=True)]


def _family(spec: HistogramSpec, raw: Mapping[Any, Any]) -> HistogramMetricFamily:
    counts: dict[tuple[str, ...], list[int]] = {}
    sums: dict[tuple[str, ...], float] = {}
    width = len(spec.buckets) + 1
    for field, value in raw.items():
        head, _, series = str(as_text(field)).partition(_SEP)
        labels = tuple(series.split(_SEP)) if spec.labels else ()
        if len(labels) != len(spec.labels):
            continue  # written by another version of the labels: not this series
        if head == "sum":
            sums[labels] = float(str(as_text(value)))
        elif head.isdigit() and int(head) < width:
            counts.setdefault(labels, [0] * width)[int(head)] += int(str(as_text(value)))
    if not spec.labels and () not in counts:
        counts[()] = [0] * width
    family = HistogramMetricFamily(spec.name, spec.documentation, labels=list(spec.labels))
    for labels in sorted(counts):
        total = 0
        buckets = []
        for bound, count in zip([*spec.buckets, math.inf], counts[labels], strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))
        family.add_metric(list(labels), buckets, sums.get(labels, 0.0))
    return family


# -- dramatiq's Prometheus middleware, with the broker Redis as its sink --

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
    """Where the middleware's metrics go: the broker Redis of the process's broker, known once bound."""

    def __init__(self, qpu_id: str) -> None:
        self.qpu_id = qpu_id
        self.client: redis.Redis | None = None
        self.process_id = ""
        self.histograms: Histograms | None = None
        self._local = threading.local()
        self._warned_at = -math.inf

    def bind(self, broker: Any) -> None:
        """Write through ``broker``'s Redis client, as its process; a broker without Redis writes nothing."""
        client = getattr(broker, "client", None)
        if self.client is None and isinstance(client, redis.Redis):
            self.process_id = str(broker.broker_id)
            self.histograms = Histograms(client, self.qpu_id, {DRAMATIQ_DURATION.name: DRAMATIQ_DURATION})
            self.client = client

    @property
    def counters_key(self) -> str:
        return _node_key(self.qpu_id, "dramatiq:counters")

    def live_key(self, process_id: str | None = None) -> str:
        return _node_key(self.qpu_id, f"dramatiq:inprogress:{process_id or self.process_id}")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside the block goes out in one round trip at its end (per thread)."""
        if self.client is None or getattr(self._local, "pipe", None) is not None:
            yield
            return
        self._local.pipe = self.client.pipeline(transaction=False)
        try:
            yield
        finally:
            pipe, self._local.pipe = self._local.pipe, None
            self._send(pipe)

    def write(self, commands: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Queue ``(method, args)`` commands on the open batch, or send them now; dropped before a bind."""
        with self._target() as target:
            if target is not None:
                for method, args in commands:
                    getattr(target, method)(*args)

    def observe(self, labels: Sequence[str], value: float) -> None:
        """One observation of dramatiq's duration histogram (milliseconds)."""
        with self._target() as target:
            if target is not None and self.histograms is not None:
                series = dict(zip(_DRAMATIQ_LABELS, labels, strict=True))
                self.histograms.observe(DRAMATIQ_DURATION.name, value, series, pipe=target)

    @contextlib.contextmanager
    def _target(self) -> Iterator[Any]:
        """The open batch's pipeline, or one sent at the end of the block; ``None`` before a bind."""
        pipe = getattr(self._local, "pipe", None)
        if pipe is not None or self.client is None:
            yield pipe
            return
        own = self.client.pipeline(transaction=False)
        yield own
        self._send(own)

    def _send(self, pipe: Any) -> None:
        """A metric never stops a message: a Redis failure here is logged (now and then) and dropped."""
        try:
            pipe.execute()
        except redis.RedisError as exc:
            now = time.monotonic()
            if now - self._warned_at >= WRITE_WARNING_INTERVAL_SEC:
                self._warned_at = now
                logger.warning("dramatiq metrics not written to the broker Redis (%s); they are lost.", exc)


class _Series:
    """One series of a counter or a live gauge: what dramatiq's hooks call ``inc``/``dec`` on."""

    def __init__(self, sink: _Sink, field: str, live: bool) -> None:
        self.sink, self.field, self.live = sink, field, live

    def inc(self, amount: int = 1) -> None:
        if not self.live:
            self.sink.write([("hincrby", (self.sink.counters_key, self.field, amount))])
            return
        key = self.sink.live_key()
        self.sink.write([("hincrby", (key, self.field, amount)), ("expire", (key, LIVE_TTL_SEC))])

    def dec(self, amount: int = 1) -> None:
        self.inc(-amount)


class _Metric:
    """A stand-in for a prometheus_client metric with labels, as dramatiq's middleware uses one."""

    def __init__(self, sink: _Sink, name: str, *, live: bool = False) -> None:
        self.sink, self.name, self.live = sink, name, live

    def labels(self, *values: str) -> _Series:
        return _Series(self.sink, _SEP.join([self.name, *map(str, values)]), self.live)


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
        """A worker that stopped holds nothing in progress any more."""
        if self.sink.client is not None:
            self.sink.write([("delete", (self.sink.live_key(),))])

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.sink.bind(broker)  # a process that only enqueues (the bridge) never boots a worker
        super().after_enqueue(broker, message, delay)

    def before_delay_message(self, broker: Any, message: Any) -> None:
        self.sink.bind(broker)
        super().before_delay_message(broker, message)

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.sink.bind(broker)  # a worker run in-process (tests, embedding) has no process boot
        with self.sink.batch():
            super().before_process_message(broker, message)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        with self.sink.batch():
            super().after_process_message(broker, message, result=result, exception=exception)

    after_skip_message = after_process_message


class DramatiqReader:
    """Reads what :class:`DramatiqMetrics` wrote, as Prometheus families, for the probes app."""

    def __init__(self, client: redis.Redis, qpu_id: str, namespace: str, heartbeat_timeout_ms: int) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.heartbeats_key = f"{namespace}:__heartbeats__"
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.histograms = Histograms(client, qpu_id, {DRAMATIQ_DURATION.name: DRAMATIQ_DURATION})

    def families(self) -> list[Any]:
        """dramatiq's counters, its in-progress gauges summed over live worker processes, its durations."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(_node_key(self.qpu_id, "dramatiq:counters"))
        # dramatiq's own heartbeats: a process whose broker has not talked to Redis lately is gone
        pipe.zrangebyscore(self.heartbeats_key, current_millis() - self.heartbeat_timeout_ms, "+inf")
        raw_counters, live_ids = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for process_id in live_ids:
            pipe.hgetall(_node_key(self.qpu_id, f"dramatiq:inprogress:{as_text(process_id)}"))
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
    name, *labels = str(as_text(field)).split(_SEP)
    return name, tuple(labels)
