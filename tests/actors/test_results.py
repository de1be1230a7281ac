"""The webhook actors on StubBroker: the retry policy the settings decide, then the dead letter."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message

from actors.jobs import _send_deliveries
from actors.results import dead_lettered, deliver
from coda_bridge.pipeline.delivery import DeliveryRetry
from coda_bridge.queueing.messages import deliveries_message, delivery_message
from coda_bridge.queueing.queues import DELIVER_BATCH_ACTOR, RESULTS_QUEUE
from coda_bridge.settings import Settings

from .conftest import Calls

#: A retry after this many milliseconds (dramatiq's Retry delay), instead of the backoff.
RETRY_DELAY_MS = 10


def test_a_delivery_is_retried_up_to_the_settings_maximum_then_dead_lettered(
    stub_broker: StubBroker, stub_worker: dramatiq.Worker, calls: Calls
) -> None:
    # given a cloud that fails every attempt, and webhook_max_retries = 2 (conftest's settings)
    calls.failures = [DeliveryRetry("503 from the cloud", delay=RETRY_DELAY_MS) for _ in range(5)]

    # when a result is queued for delivery
    deliver.send("job-1", "https://cloud.example/cb", "1-0")
    stub_broker.join(RESULTS_QUEUE, fail_fast=False, timeout=30_000)
    stub_worker.join()

    # then three attempts were made, numbered, and the result was dead-lettered after the three
    # (Deliverer.dead_lettered keeps it for `replay`: tests/pipeline/test_delivery_unit.py)
    assert [call[3] for call in calls.deliveries] == [1, 2, 3]
    assert {call[:3] for call in calls.deliveries} == {("job-1", "https://cloud.example/cb", "1-0")}
    assert calls.dead_lettered == [("job-1", 3)]


def test_a_delivery_that_goes_through_is_made_once(
    stub_broker: StubBroker, stub_worker: dramatiq.Worker, calls: Calls
) -> None:
    # given a cloud that answers
    # when a result is queued for delivery
    deliver.send("job-2", "https://cloud.example/cb")
    stub_broker.join(RESULTS_QUEUE, timeout=30_000)
    stub_worker.join()

    # then one attempt, and nothing dead-lettered
    assert calls.deliveries == [("job-2", "https://cloud.example/cb", None, 1)]
    assert calls.dead_lettered == []


def test_a_batch_s_results_get_one_attempt_together_and_one_that_fails_goes_on_alone_to_its_dead_letter(
    stub_broker: StubBroker, stub_worker: dramatiq.Worker, calls: Calls
) -> None:
    # given a cloud that answers 503 for job-b's result in the batch and on every attempt after
    calls.retried_in_batch = {"job-b"}
    calls.failures = [DeliveryRetry("503 from the cloud", delay=RETRY_DELAY_MS) for _ in range(5)]
    items = [("job-a", "https://cloud.example/cb", "1-0"), ("job-b", "https://cloud.example/cb", "2-0")]

    # when a batch's results are queued for delivery, as the jobs worker queues them
    message = deliveries_message(items)
    stub_broker.enqueue(message)
    stub_broker.join(RESULTS_QUEUE, fail_fast=False, timeout=30_000)
    stub_worker.join()

    # then one message carried both, and their first attempt was made together
    assert message.actor_name == DELIVER_BATCH_ACTOR
    assert calls.batches == [(items, 1)]
    # and job-b went on alone as attempts 2 and 3 (webhook_max_retries = 2), then was dead-lettered
    assert calls.deliveries == [
        ("job-b", "https://cloud.example/cb", "2-0", 2),
        ("job-b", "https://cloud.example/cb", "2-0", 3),
    ]
    assert calls.dead_lettered == [("job-b", 3)]


def test_one_result_is_one_deliver_message() -> None:
    # given the result of a single job
    # when it is queued for delivery
    message = deliveries_message([("job-1", "https://cloud.example/cb", "1-0")])
    # then it is a plain deliver message, as before batches
    assert (message.actor_name, message.args, message.options) == (
        "deliver",
        ("job-1", "https://cloud.example/cb", "1-0"),
        {},
    )


def test_a_dead_lettered_batch_keeps_each_of_its_results(stub_broker: StubBroker, calls: Calls) -> None:
    # given a deliver_batch message that failed for good (a bug), as dramatiq hands it to dead_lettered
    items = [("job-a", "https://cloud.example/cb", "1-0"), ("job-b", "https://cloud.example/cb", "2-0")]
    dead = deliveries_message(items).asdict()

    # when dead_lettered runs for it
    dead_lettered.fn(dead, {"retries": 0})

    # then each of its results is kept for `replay`, as a single delivery's would be
    assert calls.dead_lettered == [("job-a", 1), ("job-b", 1)]


def test_a_dead_letter_is_dated_when_its_retries_ran_out_not_when_its_note_runs(
    stub_broker: StubBroker, calls: Calls
) -> None:
    # given a deliver message whose retries ran out at a moment dramatiq noted (requeue_timestamp, ms);
    # dead_lettered runs later, behind the results queue, when `replay` may have queued it again already
    dead = delivery_message("job-a", "https://cloud.example/cb", "1-0", retries=3).asdict()
    dead["options"]["requeue_timestamp"] = 1_700_000_000_250

    # when dead_lettered runs for it
    dead_lettered.fn(dead, {"retries": 3})

    # then the job's dead letter is dated when its retries ran out, so its timeline puts it before a replay
    assert calls.dead_lettered == [("job-a", 4)]
    assert calls.dead_lettered_at == [1_700_000_000.25]


@pytest.mark.parametrize(
    "settings", [Settings(qpu_id="qpu-stub", webhook_max_retries=0, webhook_max_backoff_sec=0.05)]
)
def test_with_no_retries_allowed_a_batch_s_results_each_get_their_own_one_attempt(
    stub_broker: StubBroker, calls: Calls
) -> None:
    # given a node that allows no delivery retry (the settings above)
    items = [("job-a", "https://cloud.example/cb", "1-0"), ("job-b", "https://cloud.example/cb", "2-0")]

    # when a batch's results are queued
    _send_deliveries(items)

    # then each is a deliver message of its own (a batch would give a failed one a second attempt)
    queued = [Message.decode(data).actor_name for data in stub_broker.queues[RESULTS_QUEUE].queue]
    assert queued == ["deliver", "deliver"]
