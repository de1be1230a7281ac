"""Histograms and dramatiq's metrics in the broker Redis, as /metrics reads them (real Redis and Worker)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.common import current_millis
from redis.backoff import NoBackoff
from redis.retry import Retry

from coda_bridge.devtools.stack import wait_until
from coda_bridge.metrics import observations
from coda_bridge.metrics.histograms import (
    DRAMATIQ_DURATION,
    JOB_DURATION,
    XADD_TO_RESULT,
    Histograms,
    entry_time_sec,
)
from coda_bridge.metrics.observations import DramatiqMetrics, DramatiqReader
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.settings import Settings

QPU = "qpu-observe"
#: How long a test waits for the in-process worker to get somewhere.
WORKER_WAIT_SEC = 10.0
#: The in-process worker's idle poll.
WORKER_POLL_MS = 50


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    handle = redis.Redis.from_url(redis_url)
    yield handle
    handle.close()


def samples(families: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def by_name(families: list[Any], name: str) -> Any:
    return next(f for f in families if f.name == name)


def test_observations_land_in_cumulative_buckets_with_their_sum(client: redis.Redis) -> None:
    histograms = Histograms(client, QPU)

    for seconds in (0.3, 0.5, 2.0, 5_000.0):
        histograms.observe(JOB_DURATION.name, seconds)

    read = samples([by_name(histograms.families(), JOB_DURATION.name)])
    name = JOB_DURATION.name
    assert read[(f"{name}_bucket", (("le", "0.25"),))] == 0
    assert read[(f"{name}_bucket", (("le", "0.5"),))] == 2  # a bound is inclusive
    assert read[(f"{name}_bucket", (("le", "2.5"),))] == 3
    assert read[(f"{name}_bucket", (("le", "3600.0"),))] == 3
    assert read[(f"{name}_bucket", (("le", "+Inf"),))] == 4
    assert read[(f"{name}_count", ())] == 4
    assert read[(f"{name}_sum", ())] == pytest.approx(5_002.8)


def test_a_second_process_reads_what_the_first_observed(redis_url: str, client: redis.Redis) -> None:
    writer = Histograms(client, QPU)
    other = redis.Redis.from_url(redis_url)

    writer.observe(XADD_TO_RESULT.name, 1.2, {"status": "completed"})
    writer.observe(XADD_TO_RESULT.name, 40.0, {"status": "failed"})
    read = samples(Histograms(other, QPU).families())
    other.close()

    name = XADD_TO_RESULT.name
    assert read[(f"{name}_count", (("status", "completed"),))] == 1
    assert read[(f"{name}_count", (("status", "failed"),))] == 1
    assert read[(f"{name}_bucket", (("le", "2.5"), ("status", "completed")))] == 1
    assert read[(f"{name}_bucket", (("le", "30.0"), ("status", "failed")))] == 0


def test_an_unobserved_histogram_reads_as_zeros_and_a_labelled_one_as_no_series(client: redis.Redis) -> None:
    families = Histograms(client, QPU).families()

    read = samples(families)
    assert read[(f"{JOB_DURATION.name}_count", ())] == 0
    assert read[(f"{JOB_DURATION.name}_bucket", (("le", "+Inf"),))] == 0
    assert by_name(families, XADD_TO_RESULT.name).samples == []


def test_an_observation_on_a_pipeline_waits_for_that_round_trip(client: redis.Redis) -> None:
    histograms = Histograms(client, QPU)
    pipe = client.pipeline(transaction=False)

    histograms.observe(JOB_DURATION.name, 1.0, pipe=pipe)
    before = samples(histograms.families())[(f"{JOB_DURATION.name}_count", ())]
    pipe.execute()
    after = samples(histograms.families())[(f"{JOB_DURATION.name}_count", ())]

    assert (before, after) == (0, 1)


def test_the_seconds_since_xadd_come_from_the_stream_entry_id(client: redis.Redis) -> None:
    histograms = Histograms(client, QPU)
    labels = {"status": "completed"}

    spent = histograms.observe_since_entry(XADD_TO_RESULT.name, "1700000000000-3", labels, now=1700000002.5)
    skewed = histograms.observe_since_entry(XADD_TO_RESULT.name, "1700000009000-0", labels, now=1700000002.5)
    unknown = histograms.observe_since_entry(XADD_TO_RESULT.name, "not-an-id", labels, now=1700000002.5)

    assert entry_time_sec("1700000000000-3") == 1_700_000_000.0
    assert spent == pytest.approx(2.5)
    assert skewed == 0.0  # the cloud's clock ahead of ours: no negative latency
    assert unknown is None
    read = samples(histograms.families())
    assert read[(f"{XADD_TO_RESULT.name}_count", (("status", "completed"),))] == 2
    assert read[(f"{XADD_TO_RESULT.name}_sum", (("status", "completed"),))] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("labels", "value"),
    [
        ({}, 1.0),
        ({"status": "x", "other": "y"}, 1.0),
        ({"status": "a\x1fb"}, 1.0),
        ({"status": "x"}, math.nan),
    ],
    ids=["missing label", "extra label", "separator in a value", "NaN"],
)
def test_a_bad_observation_is_refused_and_records_nothing(
    client: redis.Redis, labels: dict[str, str], value: float
) -> None:
    histograms = Histograms(client, QPU)

    with pytest.raises(ValueError, match=XADD_TO_RESULT.name):
        histograms.observe(XADD_TO_RESULT.name, value, labels)

    assert by_name(histograms.families(), XADD_TO_RESULT.name).samples == []


_DRAMATIQ_OWN = """
import json, os, sys, tempfile
os.environ["dramatiq_prom_db"] = tempfile.mkdtemp()
from dramatiq.middleware.prometheus import Prometheus
m = Prometheus()
m.after_process_boot(None)
out = {}
for attr in ("total_messages", "total_errored_messages", "total_retried_messages", "total_rejected_messages",
             "inprogress_messages", "inprogress_delayed_messages", "message_durations"):
    metric = getattr(m, attr)
    out[attr] = {"name": metric._name, "help": metric._documentation, "labels": list(metric._labelnames),
                 "type": metric._type, "buckets": [b for b in getattr(metric, "_upper_bounds", [])
                 if b != float("inf")]}
json.dump(out, sys.stdout)
"""


def test_the_dramatiq_metrics_are_the_ones_dramatiqs_own_middleware_declares() -> None:
    # dramatiq's own middleware, booted in a process of its own (it switches prometheus_client to files)
    done = subprocess.run(
        [sys.executable, "-c", _DRAMATIQ_OWN], capture_output=True, text=True, check=True, timeout=60
    )
    own = json.loads(done.stdout)

    ours = DramatiqMetrics(QPU)

    counters = {a: (n, h) for a, n, h in observations._DRAMATIQ_COUNTERS}
    gauges = {a: (n, h) for a, n, h in observations._DRAMATIQ_GAUGES}
    for attribute, (name, documentation) in counters.items():
        assert own[attribute]["type"] == "counter"
        assert (own[attribute]["name"] + "_total", own[attribute]["help"]) == (name, documentation)
    for attribute, (name, documentation) in gauges.items():
        assert own[attribute]["type"] == "gauge"
        assert (own[attribute]["name"], own[attribute]["help"]) == (name, documentation)
    durations = own["message_durations"]
    assert (durations["name"], durations["help"]) == (DRAMATIQ_DURATION.name, DRAMATIQ_DURATION.documentation)
    assert durations["buckets"] == list(DRAMATIQ_DURATION.buckets)
    assert all(own[a]["labels"] == ["queue_name", "actor_name"] for a in own)
    assert list(DRAMATIQ_DURATION.labels) == ["queue_name", "actor_name"]
    assert all(hasattr(ours, attribute) for attribute in own)  # every attribute dramatiq's hooks use
    assert ours.forks == []  # no exposition server forked per worker


@pytest.fixture
def worker_broker(redis_url: str) -> Iterator[Any]:
    """The node's broker, with its middleware stack, and one actor that does what its argument says."""
    settings = Settings(qpu_id=QPU, broker_url=redis_url, redis_url=redis_url)
    broker = create_broker(settings)
    release = threading.Event()

    def work(mode: str) -> None:
        if mode == "raise":
            raise RuntimeError("boom")
        if mode == "hold":
            release.wait(WORKER_WAIT_SEC)

    actor = dramatiq.actor(work, broker=broker, actor_name="work", queue_name="jobs", max_retries=0)
    worker = dramatiq.Worker(broker, queues=["jobs"], worker_threads=1, worker_timeout=WORKER_POLL_MS)
    worker.start()
    try:
        yield broker, actor, release
    finally:
        release.set()
        worker.stop()
        broker.client.close()


def reader(broker: Any) -> DramatiqReader:
    return DramatiqReader(broker.client, QPU, broker.namespace, broker.heartbeat_timeout)


def test_a_worker_counts_messages_errors_dead_letters_and_durations_under_dramatiqs_names(
    worker_broker: Any,
) -> None:
    broker, actor, _ = worker_broker
    labels = (("actor_name", "work"), ("queue_name", "jobs"))

    actor.send("ok")
    actor.send("ok")
    actor.send("raise")
    read = wait_until(
        lambda: (s := samples(reader(broker).families())).get(("dramatiq_messages_total", labels)) == 3 and s,
        WORKER_WAIT_SEC,
        "three processed messages",
    )

    assert read[("dramatiq_message_errors_total", labels)] == 1
    assert read[("dramatiq_message_rejects_total", labels)] == 1  # max_retries=0: dead-lettered at once
    assert read[("dramatiq_message_duration_milliseconds_count", labels)] == 3
    every = tuple(sorted((("le", "+Inf"), *labels)))
    assert read[("dramatiq_message_duration_milliseconds_bucket", every)] == 3
    assert read[("dramatiq_messages_inprogress", labels)] == 0


def test_messages_in_progress_count_while_the_worker_holds_them(worker_broker: Any) -> None:
    broker, actor, release = worker_broker
    labels = (("actor_name", "work"), ("queue_name", "jobs"))

    def held() -> float | None:
        return samples(reader(broker).families()).get(("dramatiq_messages_inprogress", labels))

    actor.send("hold")
    wait_until(lambda: held() == 1, WORKER_WAIT_SEC, "the held message to show in progress")
    release.set()
    wait_until(lambda: held() == 0, WORKER_WAIT_SEC, "the message to leave the in-progress gauge")

    assert samples(reader(broker).families())[("dramatiq_messages_total", labels)] == 1


def test_in_progress_counts_of_a_process_that_stopped_heartbeating_are_not_read(client: redis.Redis) -> None:
    namespace = f"coda-bridge:{QPU}:dq"
    field = "dramatiq_messages_inprogress\x1fjobs\x1fwork"
    client.hset(f"coda-bridge:{QPU}:node:dramatiq:inprogress:dead", field, 1)
    client.hset(f"coda-bridge:{QPU}:node:dramatiq:inprogress:alive", field, 2)
    now_ms = current_millis()
    client.zadd(f"{namespace}:__heartbeats__", {"dead": now_ms - 60_000, "alive": now_ms})

    read = samples(DramatiqReader(client, QPU, namespace, 10_000).families())

    assert read[("dramatiq_messages_inprogress", (("actor_name", "work"), ("queue_name", "jobs")))] == 2


def test_a_metric_write_the_broker_redis_refuses_is_kept_and_lands_once_it_answers(
    caplog: pytest.LogCaptureFixture, client: redis.Redis
) -> None:
    metrics = DramatiqMetrics(QPU)
    metrics.sink.flush_interval_sec = 3600  # no background flush: this test flushes by hand
    # nothing listens on port 1; no retries, so the refusal is immediate
    broken = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))

    class _Broker:
        client = broken
        broker_id = "gone"

    message = dramatiq.Message(queue_name="jobs", actor_name="work", args=(), kwargs={}, options={})
    with caplog.at_level(logging.WARNING, logger=observations.__name__):
        metrics.before_process_message(_Broker(), message)  # neither hook waits on Redis, nor raises
        metrics.after_process_message(_Broker(), message, exception=RuntimeError("x"))
        first, second = metrics.sink.flush(), metrics.sink.flush()
    metrics.sink.client = client  # the broker Redis is back
    third = metrics.sink.flush()

    assert (first, second, third) == (False, False, True)
    warnings = [r.getMessage() for r in caplog.records if r.name == observations.__name__]
    assert len(warnings) == 1, warnings  # two failed flushes, one warning a minute
    assert "not written to the broker Redis yet" in warnings[0]
    read = samples(DramatiqReader(client, QPU, f"coda-bridge:{QPU}:dq", 10_000).families())
    labels = (("actor_name", "work"), ("queue_name", "jobs"))
    assert read[("dramatiq_messages_total", labels)] == 1
    assert read[("dramatiq_message_errors_total", labels)] == 1
    assert read[("dramatiq_message_duration_milliseconds_count", labels)] == 1


def test_many_messages_reach_redis_as_one_sum_per_series(client: redis.Redis) -> None:
    metrics = DramatiqMetrics(QPU)
    metrics.sink.flush_interval_sec = 3600
    broker = types.SimpleNamespace(client=client, broker_id="one")
    commands_before = int(client.info("stats")["total_commands_processed"])

    for _ in range(500):
        message = dramatiq.Message(queue_name="jobs", actor_name="work", args=(), kwargs={}, options={})
        metrics.before_process_message(broker, message)
        metrics.after_process_message(broker, message)
    buffered = int(client.info("stats")["total_commands_processed"]) - commands_before
    metrics.sink.flush()

    read = samples(DramatiqReader(client, QPU, f"coda-bridge:{QPU}:dq", 10_000).families())
    labels = (("actor_name", "work"), ("queue_name", "jobs"))
    assert buffered == 1  # the INFO call itself: the hooks sent nothing
    assert read[("dramatiq_messages_total", labels)] == 500
    assert read[("dramatiq_message_duration_milliseconds_count", labels)] == 500


def test_a_forked_child_starts_with_an_empty_buffer(client: redis.Redis) -> None:
    metrics = DramatiqMetrics(QPU)
    metrics.sink.flush_interval_sec = 3600
    metrics.sink.bind(types.SimpleNamespace(client=client, broker_id="parent"))
    metrics.sink.add(metrics.sink.counters_key, "dramatiq_messages_total\x1fjobs\x1fwork", 7)

    pid = os.fork()
    if pid == 0:  # the child: what the parent buffered is the parent's to send
        os._exit(0 if not metrics.sink._counts and metrics.sink._flusher is None else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert metrics.sink._counts  # the parent still holds its own
