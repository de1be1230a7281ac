"""The node's histograms, kept in the broker Redis so ``/metrics`` reads them at scrape time.

Every process of the node (bridge, workers on any host, the probes app)
shares the broker Redis, so a histogram written there is right whichever
gunicorn worker answers a scrape.  A histogram is bucket counters in one
hash per metric: an observation adds one to its bucket and to the sum,
riding a round trip the caller makes anyway when it passes its pipeline,
and a scrape adds the buckets up.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from ..replies import as_text
from ..state.broker_keys import histogram_key

__all__ = [
    "DELIVERY_ATTEMPTS",
    "DRAMATIQ_DURATION",
    "FIELD_SEP",
    "JOB_DURATION",
    "NODE_HISTOGRAMS",
    "WEBHOOK_DURATION",
    "XADD_TO_RESULT",
    "HistogramSpec",
    "Histograms",
    "entry_time_sec",
]

#: Separates label values (and the bucket index) inside a hash field; label values never contain it.
FIELD_SEP = "\x1f"


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


class Histograms:
    """Histograms of one QPU in the broker Redis: :meth:`observe` anywhere, :meth:`families` at scrape."""

    def __init__(
        self, client: redis.Redis, qpu_id: str, specs: Mapping[str, HistogramSpec] = NODE_HISTOGRAMS
    ) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.specs = dict(specs)

    def key(self, name: str) -> str:
        return histogram_key(self.qpu_id, name)

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
        key, bucket, total = self.fields(name, value, [str(given[label]) for label in spec.labels])
        target = self.client.pipeline(transaction=True) if pipe is None else pipe
        target.hincrby(key, bucket, 1)
        target.hincrbyfloat(key, total, float(value))
        if pipe is None:
            target.execute()

    def fields(self, name: str, value: float, values: Sequence[str]) -> tuple[str, str, str]:
        """The hash, bucket field and sum field an observation of ``value`` adds to (labels in order)."""
        spec = self.specs[name]
        if math.isnan(value):
            raise ValueError(f"{name}: cannot observe NaN")
        if len(values) != len(spec.labels) or any(FIELD_SEP in str(v) for v in values):
            raise ValueError(f"{name}: a label value is missing or contains the field separator")
        bucket = bisect.bisect_left(spec.buckets, value)  # the first bound >= value; len(buckets) is +Inf
        series = FIELD_SEP.join(map(str, values))
        return self.key(name), f"{bucket}{FIELD_SEP}{series}", f"sum{FIELD_SEP}{series}"

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
        head, _, series = str(as_text(field)).partition(FIELD_SEP)
        labels = tuple(series.split(FIELD_SEP)) if spec.labels else ()
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
