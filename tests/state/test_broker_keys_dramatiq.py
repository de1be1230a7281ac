"""state/broker_keys.py spells dramatiq's key layout as the installed dramatiq writes it (real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coda_bridge.queueing.entry_index import ALIVE, GONE, PARKED, EntryIndex
from coda_bridge.queueing.messages import delivery_message
from coda_bridge.queueing.queues import RESULTS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker
from coda_bridge.state.broker_keys import (
    broker_namespace,
    dead_messages_key,
    dead_queue_key,
    heartbeats_key,
    messages_key,
    queue_key,
    wake_key,
)

#: A QPU id that needs escaping, so the namespace the broker is given is the one the keys module reads.
QPU = "q:layout*"


@pytest.fixture
def broker(redis_url: str) -> Iterator[CodaBroker]:
    made = CodaBroker(url=redis_url, namespace=broker_namespace(QPU), middleware=[])
    made.declare_queue(RESULTS_QUEUE)
    yield made
    made.client.close()


def test_a_queued_message_sits_where_the_keys_module_looks(broker: CodaBroker) -> None:
    # Given a message enqueued through dramatiq's own Lua
    (sent,) = broker.enqueue_many([delivery_message("j-1", "https://cloud/cb", "1-0")])
    redis_id = sent.options["redis_message_id"]
    namespace = broker.namespace

    # Then its id is on the queue's list, its body in the queue's hash, and a wake-up token beside them
    assert broker.client.lrange(queue_key(namespace, RESULTS_QUEUE), 0, -1) == [redis_id.encode()]
    assert broker.client.hexists(messages_key(namespace, RESULTS_QUEUE), redis_id)
    assert broker.client.llen(wake_key(namespace, RESULTS_QUEUE)) == 1


def test_a_dead_message_and_a_worker_heartbeat_sit_where_the_keys_module_looks(broker: CodaBroker) -> None:
    # Given a message fetched by this broker (a worker) and then rejected
    (sent,) = broker.enqueue_many([delivery_message("j-2", "https://cloud/cb", "2-0")])
    redis_id = sent.options["redis_message_id"]
    fetched = broker.do_fetch(RESULTS_QUEUE, 1)
    broker.do_nack(RESULTS_QUEUE, redis_id)
    namespace = broker.namespace

    # Then the worker beat in dramatiq's heartbeats, and the message is dead-lettered where replay reads it
    assert len(fetched) == 1
    assert broker.client.zscore(heartbeats_key(namespace), broker.broker_id) is not None
    assert broker.client.zscore(dead_queue_key(namespace, RESULTS_QUEUE), redis_id) is not None
    assert broker.client.hexists(dead_messages_key(namespace, RESULTS_QUEUE), redis_id)
    assert not broker.client.hexists(messages_key(namespace, RESULTS_QUEUE), redis_id)


def test_the_entry_index_reads_dramatiqs_keys_through_the_keys_module(broker: CodaBroker) -> None:
    # Given the entry index as the broker's enqueue hook, for a QPU id that needs escaping
    index = EntryIndex(broker.client, QPU, broker.namespace)
    broker.enqueue_hooks.append(index.record)

    # When one delivery is fetched and dead-lettered, another queued, and one entry was never seen
    (dead,) = broker.enqueue_many([delivery_message("j-2", "https://cloud/cb", "2-0")])
    assert len(broker.do_fetch(RESULTS_QUEUE, 1)) == 1
    broker.do_nack(RESULTS_QUEUE, dead.options["redis_message_id"])
    broker.enqueue_many([delivery_message("j-1", "https://cloud/cb", "1-0")])

    # Then its Lua finds each message where dramatiq keeps it
    assert index.liveness(["1-0", "2-0", "3-0"]) == [(ALIVE, "j-1"), (PARKED, "j-2"), (GONE, None)]
