"""A message no live worker progresses is not alive, however long its id stays in the queue's hash (issue 23).

dramatiq's Redis broker keeps a message's data in ``<queue>.msgs`` from
enqueue to acknowledgement; while queued its id is on the ``<queue>`` list,
once fetched in the fetching worker's ``__acks__.<worker>.<queue>`` set, and
each worker's last dispatch in ``__heartbeats__``.  On a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.common import current_millis

from coda_bridge.pipeline.intake import StreamBridge, job_message
from coda_bridge.queueing.entry_index import ALIVE, GONE, EntryIndex
from coda_bridge.queueing.queues import JOBS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.node_state import NodeState

QPU = "qpu-liveness-test"
STREAM, GROUP, CONSUMER = f"qpu:{QPU}:jobs", f"qpu:{QPU}:workers", "bridge-a"
HEARTBEAT_TIMEOUT_SEC = 10
DEAD_WORKER = "dead-worker-1"


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
            "worker_heartbeat_timeout_sec": HEARTBEAT_TIMEOUT_SEC,
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


def _forwarded(broker: CodaBroker, cloud: redis.Redis, *names: str) -> list[str]:
    """Jobs read from the stream by this bridge and forwarded to the jobs queue; their entry ids."""
    ids = [str(cloud.xadd(STREAM, _job(name))) for name in names]
    cloud.xreadgroup(GROUP, CONSUMER, {STREAM: ">"})
    broker.enqueue_many([job_message(_job(name), entry) for name, entry in zip(names, ids, strict=True)])
    return ids


def _fetched_by_a_dead_worker(broker: CodaBroker) -> list[str]:
    """A worker fetched every queued job, then died: its heartbeat is older than the timeout."""
    mine = f"{broker.namespace}:__acks__.{broker.broker_id}.{JOBS_QUEUE}"
    broker.do_fetch(JOBS_QUEUE, 100)
    ids = [str(i) for i in broker.client.smembers(mine)]
    broker.client.rename(mine, f"{broker.namespace}:__acks__.{DEAD_WORKER}.{JOBS_QUEUE}")
    stale = current_millis() - (HEARTBEAT_TIMEOUT_SEC + 5) * 1000
    broker.client.zadd(f"{broker.namespace}:__heartbeats__", {DEAD_WORKER: stale})
    return ids


def _queued(broker: CodaBroker) -> list[Any]:
    return list(broker.client.lrange(f"{broker.namespace}:{JOBS_QUEUE}", 0, -1))


def test_a_message_held_by_a_dead_worker_is_forwarded_again(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    # given: a job fetched by a worker that died since (its message still in the queue's hash)
    [entry] = _forwarded(broker, cloud, "orphaned")
    _fetched_by_a_dead_worker(broker)
    broker.do_fetch(JOBS_QUEUE, 0)  # a live worker polls: its heartbeat is the newest

    # when: the reconciler passes
    report = bridge.reconciler.run_once()

    # then: the entry is forwarded again: on the queue for a live worker
    assert report.forwarded == [entry]
    assert len(_queued(broker)) == 1


def test_a_message_left_in_the_hash_in_no_list_or_set_is_forwarded_again(
    bridge: StreamBridge, broker: CodaBroker, cloud: redis.Redis
) -> None:
    # given: a job whose message a live worker fetched, and whose hand-back was lost (not acknowledged)
    [entry] = _forwarded(broker, cloud, "left-over")
    broker.do_fetch(JOBS_QUEUE, 100)
    broker.client.delete(f"{broker.namespace}:__acks__.{broker.broker_id}.{JOBS_QUEUE}")

    # when: the reconciler passes
    report = bridge.reconciler.run_once()

    # then: it is forwarded again
    assert report.forwarded == [entry]


@pytest.mark.usefixtures("bridge")  # the stream and its group
def test_queued_messages_and_those_held_by_a_live_worker_are_alive(
    broker: CodaBroker, cloud: redis.Redis
) -> None:
    # given: one job fetched by a live worker, one still queued, one held by a dead worker
    held, queued, dead = _forwarded(broker, cloud, "held", "queued", "dead")
    index = EntryIndex(broker.client, QPU, broker.namespace, heartbeat_timeout_sec=HEARTBEAT_TIMEOUT_SEC)
    broker.do_fetch(JOBS_QUEUE, 1)  # "held": ours, fresh heartbeat
    rest = f"{broker.namespace}:{JOBS_QUEUE}"
    last = broker.client.rpop(rest)  # "dead" goes to a dead worker's set
    broker.client.sadd(f"{broker.namespace}:__acks__.{DEAD_WORKER}.{JOBS_QUEUE}", last)
    broker.client.zadd(f"{broker.namespace}:__heartbeats__", {DEAD_WORKER: current_millis() - 60_000})

    # when: their liveness is asked
    states = [state for state, _ in index.liveness([held, queued, dead])]

    # then: held and queued are alive, the dead worker's is gone
    assert states == [ALIVE, ALIVE, GONE]


@pytest.mark.usefixtures("bridge")  # the stream and its group
def test_no_worker_looks_dead_while_every_heartbeat_stalled_together(
    broker: CodaBroker, cloud: redis.Redis
) -> None:
    # given: a live worker holds a job, but no heartbeat was written for longer than the timeout
    # (a broker refusing writes refuses dramatiq's heartbeats too)
    [entry] = _forwarded(broker, cloud, "stalled")
    broker.do_fetch(JOBS_QUEUE, 100)
    stale = current_millis() - (HEARTBEAT_TIMEOUT_SEC + 5) * 1000
    broker.client.zadd(f"{broker.namespace}:__heartbeats__", {broker.broker_id: stale})
    index = EntryIndex(broker.client, QPU, broker.namespace, heartbeat_timeout_sec=HEARTBEAT_TIMEOUT_SEC)

    # when: its liveness is asked
    [(state, job_id)] = index.liveness([entry])

    # then: alive: the newest heartbeat is the measure, not the clock
    assert (state, job_id) == (ALIVE, "stalled")
