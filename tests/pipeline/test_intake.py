"""The stream bridge against a real Redis: forward, keep pending, recover, claim, pause, recreate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from coda_bridge.pipeline.intake import StreamBridge
from coda_bridge.queueing.entry_index import ALIVE, EntryIndex
from coda_bridge.queueing.queues import JOBS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.node_state import NodeState

QPU = "qpu-bridge-test"
STREAM, GROUP = f"qpu:{QPU}:jobs", f"qpu:{QPU}:workers"


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch, redis_url: str) -> Settings:
    return load_settings(
        overrides={
            "qpu_id": QPU,
            "redis_url": redis_url,
            "broker_url": redis_url,
            "consumer_name": "bridge-a",
            "stream_block_ms": 50,
            "claim_idle_sec": 0.2,
            "max_local_queue": 5,
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


def _bridge(settings: Settings, broker: CodaBroker) -> StreamBridge:
    return StreamBridge(settings, broker, NodeState(broker.client, QPU))


def _queued(broker: CodaBroker) -> list[Message[Any]]:
    ids = broker.client.lrange(f"{broker.namespace}:{JOBS_QUEUE}", 0, -1)
    data = [broker.client.hget(f"{broker.namespace}:{JOBS_QUEUE}.msgs", i) for i in ids]
    return [Message.decode(d) for d in data]


def _job(n: int) -> dict[str, str]:
    return {"job_id": f"j-{n}", "callback_url": "http://cloud/cb", "ir_json": "{}", "shots": "1"}


def test_entries_are_enqueued_and_stay_pending_until_their_job_is_over(
    settings: Settings, broker: CodaBroker, cloud: redis.Redis
) -> None:
    bridge = _bridge(settings, broker)
    bridge.ensure_group()
    ids = [cloud.xadd(STREAM, _job(n)) for n in range(3)]

    bridge.cycle()
    bridge.cycle()

    queued = _queued(broker)
    assert [m.args[1] for m in queued] == ids
    assert [m.args[0]["job_id"] for m in queued] == ["j-0", "j-1", "j-2"]
    assert cloud.xpending(STREAM, GROUP)["pending"] == 3, "the stream stays the ledger"
    states = EntryIndex(broker.client, QPU, broker.namespace).liveness(ids)
    assert states == [(ALIVE, "j-0"), (ALIVE, "j-1"), (ALIVE, "j-2")]
    assert NodeState(broker.client, QPU).last_stream_read() is not None


def test_the_bridge_counts_as_reading_before_its_first_blocking_read_returns(
    settings: Settings, broker: CodaBroker
) -> None:
    # Given a bridge whose stream reads block for a long time (an idle stream)
    slow = settings.model_copy(update={"stream_block_ms": 3000})
    bridge = _bridge(slow, broker)
    state = NodeState(broker.client, QPU)
    assert state.last_stream_read() is None
    seen_at_read: list[float | None] = []
    read = bridge.cloud.xreadgroup

    def record(*args: Any, **kwargs: Any) -> Any:
        seen_at_read.append(state.last_stream_read())
        return read(*args, **{**kwargs, "block": 10})

    bridge.cloud.xreadgroup = record  # type: ignore[method-assign]

    # When its first cycle reaches the blocking read
    bridge.cycle()

    # Then the group was ready and the read recorded before the read blocked: /ready need not wait
    # out a whole block of an idle stream
    assert seen_at_read and seen_at_read[0] is not None


def test_a_blocked_read_never_holds_the_next_reconcile_pass_back(
    settings: Settings, broker: CodaBroker
) -> None:
    # Given a bridge whose reads may block 3 s, and entries that look idle to others after 0.6 s
    slow = settings.model_copy(update={"stream_block_ms": 3000, "claim_idle_sec": 0.6})
    bridge = _bridge(slow, broker)
    blocks: list[int] = []
    read = bridge.cloud.xreadgroup

    def record(*args: Any, **kwargs: Any) -> Any:
        blocks.append(kwargs["block"])
        return read(*args, **kwargs)

    bridge.cloud.xreadgroup = record  # type: ignore[method-assign]

    # When it reads an idle stream
    bridge.cycle()

    # Then the read blocks no longer than the pass interval (a third of claim_idle_sec), so the pass
    # that keeps this bridge's long jobs from looking idle comes in time
    assert blocks == [200]


def test_a_restart_does_not_forward_entries_the_broker_still_holds(
    settings: Settings, broker: CodaBroker, cloud: redis.Redis
) -> None:
    first = _bridge(settings, broker)
    first.ensure_group()
    entry = cloud.xadd(STREAM, _job(1))
    first.cycle()

    _bridge(settings, broker).cycle()  # a restarted bridge reconciles first

    assert [m.args[1] for m in _queued(broker)] == [entry], "forwarded once, not again"


def test_own_pending_entries_are_requeued_at_start(
    settings: Settings, broker: CodaBroker, cloud: redis.Redis
) -> None:
    cloud.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry = cloud.xadd(STREAM, _job(1))
    cloud.xreadgroup(GROUP, "bridge-a", {STREAM: ">"})  # read, then "crashed" before the hand-over

    _bridge(settings, broker).cycle()

    assert [m.args[1] for m in _queued(broker)] == [entry]
    assert cloud.xpending(STREAM, GROUP)["pending"] == 1


def test_entries_idle_at_a_dead_consumer_are_claimed(
    settings: Settings, broker: CodaBroker, cloud: redis.Redis
) -> None:
    cloud.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry = cloud.xadd(STREAM, _job(1))
    cloud.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"})
    bridge = _bridge(settings, broker)
    bridge.cycle()
    assert _queued(broker) == []

    deadline = time.monotonic() + 5
    while not _queued(broker) and time.monotonic() < deadline:
        bridge._last_claim = 0.0
        bridge.cycle()

    assert [m.args[1] for m in _queued(broker)] == [entry]
    [pending] = cloud.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert pending["consumer"] == "bridge-a"


def test_a_deep_local_queue_pauses_reading(
    settings: Settings, broker: CodaBroker, cloud: redis.Redis
) -> None:
    bridge = _bridge(settings, broker)
    bridge.ensure_group()
    for n in range(8):
        cloud.xadd(STREAM, _job(n))
    bridge.cycle()
    assert len(_queued(broker)) == 8

    cloud.xadd(STREAM, _job(99))
    bridge.cycle()

    assert len(_queued(broker)) == 8
    unread = cloud.xreadgroup(GROUP, "probe", {STREAM: ">"})
    assert [fields["job_id"] for _, fields in unread[0][1]] == ["j-99"]


def test_a_vanished_group_is_recreated(settings: Settings, broker: CodaBroker, cloud: redis.Redis) -> None:
    bridge = _bridge(settings, broker)
    bridge.cycle()
    cloud.delete(STREAM)

    bridge.cycle()  # NOGROUP: recreate on the next cycle
    cloud.xadd(STREAM, _job(5))
    bridge.cycle()
    bridge.cycle()

    assert [m.args[0]["job_id"] for m in _queued(broker)] == ["j-5"]


class _ReplyShapes:
    """XAUTOCLAIM replies as Redis 6.2 (two parts, deleted entries as nil) and 7 (three parts) give them."""

    def __init__(self, reply: list[Any]) -> None:
        self.reply = reply
        self.acked: list[str] = []

    def xautoclaim(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (["0-0", [("1-0", _job(1)), ("2-0", None)]], 2),  # a deleted entry stays pending (nil fields)
        (["0-0", [("1-0", _job(1))], ["2-0"]], 1),  # Redis 7 drops deleted entries from the group
    ],
    ids=["redis-6.2", "redis-7"],
)
def test_xautoclaim_replies_of_both_redis_versions(
    settings: Settings, broker: CodaBroker, reply: list[Any], expected: int
) -> None:
    fake = _ReplyShapes(reply)
    bridge = StreamBridge(settings, broker, NodeState(broker.client, QPU), cloud=fake)  # type: ignore[arg-type]

    claimed = bridge._claim_idle()

    assert claimed == expected, "the entries are now this consumer's, for the reconcile pass to sort"
    assert _queued(broker) == []


def test_an_idle_consumer_wakes_on_enqueue_before_its_timeout(broker: CodaBroker) -> None:
    woke = threading.Event()

    def wait() -> None:
        broker.wait_for_enqueue(JOBS_QUEUE, timeout_sec=10)
        woke.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    broker.enqueue(Message(queue_name=JOBS_QUEUE, actor_name="execute", args=(), kwargs={}, options={}))

    assert woke.wait(5), "the enqueue did not wake the blocked consumer"


def test_a_job_s_queued_event_is_stamped_before_a_worker_can_take_it(
    settings: Settings, broker: CodaBroker, cloud: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker on which a worker takes the message (and stamps "started") while the enqueue returns
    bridge = _bridge(settings, broker)
    bridge.ensure_group()
    cloud.xadd(STREAM, _job(0))
    enqueue_many, taken_at = broker.enqueue_many, []

    def enqueue_then_taken(messages: list[Message[Any]]) -> Any:
        sent = enqueue_many(messages)
        taken_at.append(round(time.time(), 3))
        time.sleep(0.01)  # (the enqueue's own reply is still on its way)
        return sent

    monkeypatch.setattr(broker, "enqueue_many", enqueue_then_taken)

    # When the bridge forwards the entry
    bridge.cycle()

    # Then the timeline's "queued" comes before anything a worker did with the message
    (queued,) = [e for e in bridge.timeline.read("j-0") if e["event"] == "queued"]
    assert queued["at"] <= taken_at[0]
