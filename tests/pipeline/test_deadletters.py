"""Replaying dead letters on a real broker Redis: the message goes back, the timeline says so first."""

from __future__ import annotations

import time
from typing import Any

import pytest
from dramatiq import Message

from coda_bridge.pipeline.deadletters import dead_letters, replay_dead_letters
from coda_bridge.pipeline.timeline import Timeline
from coda_bridge.queueing.messages import delivery_message
from coda_bridge.queueing.queues import RESULTS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.broker_keys import dead_messages_key, dead_queue_key

QPU = "qpu-dead"
#: How long the stand-in enqueue takes: a results worker may deliver the message meanwhile.
ENQUEUE_SEC = 0.05


@pytest.fixture
def broker(redis_url: str) -> Any:
    broker = create_broker(Settings(broker_url=redis_url, qpu_id=QPU), qpu_id=QPU)
    yield broker
    broker.close()


def _dead_letter(broker: CodaBroker, job_id: str) -> None:
    message = delivery_message(job_id, "https://cloud.example/callback", "1-0")
    broker.client.zadd(
        dead_queue_key(broker.namespace, RESULTS_QUEUE), {message.message_id: time.time() * 1000}
    )
    broker.client.hset(
        dead_messages_key(broker.namespace, RESULTS_QUEUE), message.message_id, message.encode()
    )


def test_a_replayed_job_s_timeline_event_is_stamped_before_its_message_can_be_delivered(
    broker: CodaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a dead-lettered result, and an enqueue during which a worker could deliver it
    _dead_letter(broker, "job-9")
    timeline = Timeline(broker.client, QPU, retention_sec=60)
    enqueued: list[float] = []
    original = broker.enqueue

    def enqueue(message: Message[Any], **options: Any) -> Message[Any]:
        enqueued.append(time.time())
        time.sleep(ENQUEUE_SEC)
        return original(message, **options)

    monkeypatch.setattr(broker, "enqueue", enqueue)

    # When it is replayed
    replayed = replay_dead_letters(broker, timeline=timeline)

    # Then it left the dead letters, and its "replayed" event is dated no later than the enqueue began
    assert [letter.job_id for letter in replayed] == ["job-9"]
    assert dead_letters(broker, [RESULTS_QUEUE]) == []
    events = timeline.read("job-9")
    assert [event["event"] for event in events] == ["replayed"]
    assert events[0]["at"] <= round(enqueued[0], 3) + 0.001
