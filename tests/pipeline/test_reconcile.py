"""Reconciling pending stream entries with what the broker holds, on a real Redis.

Each case sets up one situation the broker can be left in (a message still
queued, lost, a result recorded but not delivered, delivered but not
acknowledged, a claim held) and checks what one pass does about it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from coda_bridge.pipeline.deadletters import replay_dead_letters
from coda_bridge.pipeline.intake import StreamBridge
from coda_bridge.queueing.entry_index import ALIVE, GONE, PARKED, EntryIndex
from coda_bridge.queueing.messages import delivery_message, job_message
from coda_bridge.queueing.queues import JOBS_QUEUE, RESULTS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.broker_keys import claim_key, dead_queue_key, job_key
from coda_bridge.state.node_state import NodeState

QPU = "qpu-reconcile-test"
STREAM, GROUP, CONSUMER = f"qpu:{QPU}:jobs", f"qpu:{QPU}:workers", "bridge-a"


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch, redis_url: str) -> Settings:
    return load_settings(
        overrides={
            "qpu_id": QPU,
            "redis_url": redis_url,
            "broker_url": redis_url,
            "consumer_name": CONSUMER,
            "stream_block_ms": 50,
            "claim_idle_sec": 60,
        }
    )


@pytest.fixture
def broker(settings: Settings) -> Iterator[CodaBroker]:
    made = create_broker(settings)
    yield made
    made.close()


@pytest.fixture
def cloud(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def bridge(settings: Settings, broker: CodaBroker) -> StreamBridge:
    made = StreamBridge(settings, broker, NodeState(broker.client, QPU))
    made.ensure_group()
    return made


def _job(name: str) -> dict[str, str]:
    return {"job_id": name, "callback_url": "http://cloud/cb", "ir_json": "{}", "shots": "1"}


def _read(cloud: redis.Redis, *names: str) -> list[str]:
    """XADD a job per name and read them as this bridge's consumer, without forwarding them."""
    ids = [cloud.xadd(STREAM, _job(name)) for name in names]
    cloud.xreadgroup(GROUP, CONSUMER, {STREAM: ">"})
    return ids


def _messages(broker: CodaBroker, queue: str) -> list[Message[Any]]:
    ids = broker.client.lrange(f"{broker.namespace}:{queue}", 0, -1)
    return [Message.decode(broker.client.hget(f"{broker.namespace}:{queue}.msgs", i)) for i in ids]


def _pending(cloud: redis.Redis) -> list[str]:
    return [p["message_id"] for p in cloud.xpending_range(STREAM, GROUP, "-", "+", 100)]


def test_an_entry_whose_message_is_queued_is_left_alone(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    [entry] = _read(cloud, "queued")
    broker.enqueue_many([job_message(_job("queued"), entry)])

    report = bridge.reconciler.run_once()

    assert report.pending == 1 and report.repaired == 0
    assert len(_messages(broker, JOBS_QUEUE)) == 1


def test_entries_the_broker_lost_are_forwarded_again(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    ids = _read(cloud, "lost-1", "lost-2")
    broker.enqueue_many([job_message(_job(f"lost-{n}"), entry) for n, entry in enumerate(ids, 1)])
    # a broker that restarted without persistence, or a FLUSHALL (here the cloud shares its server)
    broker.client.delete(*broker.client.keys("coda-bridge:*"))

    report = bridge.reconciler.run_once()

    assert sorted(report.forwarded) == sorted(ids)
    assert sorted(m.args[1] for m in _messages(broker, JOBS_QUEUE)) == sorted(ids)
    assert _pending(cloud) == ids, "still pending: the stream is the ledger until the cloud has the result"
    assert bridge.reconciler.run_once().repaired == 0, (
        "forwarding again is recorded: a second pass does nothing"
    )


def test_a_dead_lettered_job_waits_for_replay_instead_of_one_more_dead_letter_per_pass(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    # given: a job whose message a worker took and failed for good (dramatiq dead-lettered it)
    [entry] = _read(cloud, "failing")
    [sent] = broker.enqueue_many([job_message(_job("failing"), entry)])
    broker.do_fetch(JOBS_QUEUE, 10)
    broker.do_nack(JOBS_QUEUE, sent.options["redis_message_id"])

    # when: the reconciler passes again and again (a job failing on every attempt would fail each copy)
    reports = [bridge.reconciler.run_once() for _ in range(3)]

    # then: its entry is parked with its one dead letter, still pending at the cloud, for replay
    assert [report.forwarded for report in reports] == [[], [], []]
    assert _messages(broker, JOBS_QUEUE) == []
    assert broker.client.zcard(dead_queue_key(broker.namespace, JOBS_QUEUE)) == 1
    assert EntryIndex(broker.client, QPU, broker.namespace).liveness([entry]) == [(PARKED, "failing")]
    assert _pending(cloud) == [entry]
    # and replay sends it again, once
    assert [letter.job_id for letter in replay_dead_letters(broker, queues=(JOBS_QUEUE,))] == ["failing"]
    assert [m.args[1] for m in _messages(broker, JOBS_QUEUE)] == [entry]
    assert bridge.reconciler.run_once().repaired == 0


def test_a_recorded_result_nothing_delivers_is_queued_for_delivery(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    [entry] = _read(cloud, "recorded")
    payload = {"job_id": "recorded", "status": "completed", "counts": {"0": 1}}
    broker.client.hset(job_key(QPU, "recorded"), "result", json.dumps(payload))

    report = bridge.reconciler.run_once()

    assert report.redelivered == [entry]
    [message] = _messages(broker, RESULTS_QUEUE)
    assert list(message.args) == ["recorded", "http://cloud/cb", entry]
    assert _messages(broker, JOBS_QUEUE) == [], "a recorded job is never run again"


def test_a_delivered_result_whose_acknowledgement_was_lost_is_acknowledged(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    [entry] = _read(cloud, "delivered")
    broker.client.hset(job_key(QPU, "delivered"), mapping={"result": "{}", "delivered": "1"})

    report = bridge.reconciler.run_once()

    assert report.acknowledged == [entry]
    assert _pending(cloud) == []
    assert _messages(broker, JOBS_QUEUE) == [] and _messages(broker, RESULTS_QUEUE) == []


def test_a_job_claimed_by_a_worker_is_left_running(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    [entry] = _read(cloud, "running")
    broker.client.set(claim_key(QPU, "running"), "worker-token", px=15_000)

    report = bridge.reconciler.run_once()

    assert report.repaired == 0
    assert _pending(cloud) == [entry]


def test_an_entry_the_stream_no_longer_has_is_acknowledged(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    [entry] = _read(cloud, "trimmed")
    cloud.xdel(STREAM, entry)

    report = bridge.reconciler.run_once()

    if report.pending:  # Redis 6.2 keeps a deleted entry pending; 7 may report it as gone
        assert report.acknowledged == [entry]
    assert _pending(cloud) == []


def test_a_pass_keeps_long_running_entries_from_looking_idle(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    [entry] = _read(cloud, "long")
    broker.client.set(claim_key(QPU, "long"), "worker-token", px=15_000)
    cloud.xclaim(STREAM, GROUP, CONSUMER, 0, [entry], idle=3_600_000, justid=True)  # an hour idle

    bridge.reconciler.run_once()

    [pending] = cloud.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert pending["time_since_delivered"] < 5_000
    assert pending["consumer"] == CONSUMER


def test_the_entry_index_tells_running_from_dead_lettered_from_gone(
    broker: CodaBroker, cloud: redis.Redis
) -> None:
    index = EntryIndex(broker.client, QPU, broker.namespace)
    broker.enqueue_many(
        [delivery_message(name, "http://cloud/cb", f"{n}-0") for n, name in ((1, "a"), (2, "b"))]
    )
    ids = {m.args[0]: m.options["redis_message_id"] for m in _messages(broker, RESULTS_QUEUE)}
    broker.do_fetch(RESULTS_QUEUE, 10)  # both taken by a worker, as dramatiq's consumer does
    broker.do_nack(RESULTS_QUEUE, ids["b"])  # b ran out of retries: dramatiq dead-letters it

    states = index.liveness(["1-0", "2-0", "3-0"])

    assert states == [(ALIVE, "a"), (PARKED, "b"), (GONE, None)]
