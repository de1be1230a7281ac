"""The ticker on a real Redis with a fake clock: one send per slot, stale ticks dropped."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage

from coda_bridge.control.ticker import Tick, Ticker, one_at_a_time
from coda_bridge.devtools.stack import wait_until
from coda_bridge.queueing.middleware import StaleTicks
from coda_bridge.queueing.queues import CONTROL_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.broker_keys import tick_key

QPU = "qpu-tick"
#: A fake wall clock, well away from any slot boundary of the intervals below.
T0 = 1_800_000_000.25


@pytest.fixture
def brokers(redis_url: str) -> Iterator[list[CodaBroker]]:
    """Three brokers (three connections) on one Redis, as three processes would have."""
    settings = Settings(qpu_id=QPU, broker_url=redis_url, redis_url=redis_url)
    made = [create_broker(settings) for _ in range(3)]
    yield made
    for broker in made:
        broker.close()


def queued(broker: CodaBroker) -> list[Message]:
    """Messages waiting in the control queue, decoded."""
    client = broker.client
    ids = client.lrange(f"{broker.namespace}:{CONTROL_QUEUE}", 0, -1)
    raw = client.hmget(f"{broker.namespace}:{CONTROL_QUEUE}.msgs", ids) if ids else []
    return [Message.decode(data) for data in raw]


def test_several_tickers_send_each_slot_once(brokers: list[CodaBroker]) -> None:
    ticks = [Tick("heartbeat", 1.0), Tick("vpn_check", 2.0)]
    tickers = [Ticker(broker, QPU, ticks) for broker in brokers]
    sends: Counter[tuple[str, int]] = Counter()
    rng = random.Random(5)

    for step in range(20):  # 10 s of fake time in half-second steps
        now = T0 + step * 0.5
        rng.shuffle(tickers)
        for ticker in tickers:
            for name in ticker.tick_once(now):
                interval = 1.0 if name == "heartbeat" else 2.0
                sends[(name, int(now // interval))] += 1

    heartbeat_slots = range(int(T0), int(T0 + 9.5) + 1)
    vpn_slots = range(int(T0 // 2), int((T0 + 9.5) // 2) + 1)
    expected = {("heartbeat", s) for s in heartbeat_slots} | {("vpn_check", s) for s in vpn_slots}
    assert set(sends) == expected
    assert set(sends.values()) == {1}, f"a slot was sent more than once: {sends}"
    assert sum(t.sent for t in tickers) == len(expected)
    assert sum(t.lost for t in tickers) == 2 * len(expected), "every slot was contended by the other two"

    messages = queued(brokers[0])
    assert len(messages) == len(expected)
    beats = sorted(m.args[0] for m in messages if m.actor_name == "heartbeat")
    assert beats == [float(s) for s in heartbeat_slots]
    for message in messages:
        interval = 1.0 if message.actor_name == "heartbeat" else 2.0
        assert message.kwargs == {"expires_at": message.args[0] + interval}
        assert "max_age" not in message.options  # dramatiq's age limit would dead-letter a late tick


def test_a_slot_is_not_sent_twice_by_one_ticker_and_missed_slots_are_not_replayed(
    brokers: list[CodaBroker],
) -> None:
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 1.0)])

    assert ticker.tick_once(T0) == ["heartbeat"]
    assert ticker.tick_once(T0 + 0.5) == []  # same slot
    assert ticker.tick_once(T0 + 30.2) == ["heartbeat"]  # woke after a stall: only the current slot

    assert [m.args[0] for m in queued(brokers[0])] == [float(int(T0)), float(int(T0 + 30))]


def test_slot_key_is_taken_with_a_lease(brokers: list[CodaBroker]) -> None:
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 3.0)])
    ticker.tick_once(T0)

    ttl_ms = brokers[0].client.pttl(tick_key(QPU, "heartbeat", int(T0 // 3.0)))
    assert 5000 < ttl_ms <= 6000  # two intervals: a ticker whose clock lags still finds it taken


def test_stale_ticks_skips_a_tick_past_its_slot(brokers: list[CodaBroker]) -> None:
    broker = brokers[0]
    now = [100.0]
    broker.add_middleware(StaleTicks(clock=lambda: now[0]))
    dramatiq.actor(
        lambda *a, **k: None, broker=broker, actor_name="beat", queue_name=CONTROL_QUEUE, tick=True
    )
    dramatiq.actor(lambda *a, **k: None, broker=broker, actor_name="plain", queue_name=CONTROL_QUEUE)

    def skipped(actor_name: str, *args: float, **kwargs: float) -> bool:
        message = dramatiq.Message(
            queue_name=CONTROL_QUEUE, actor_name=actor_name, args=args, kwargs=kwargs, options={}
        )
        try:
            broker.emit_before("process_message", MessageProxy(message))
        except SkipMessage:
            return True
        return False

    assert not skipped("beat", 99.0, expires_at=100.5)
    now[0] = 100.5
    assert skipped("beat", 99.5, expires_at=100.5)
    assert not skipped("beat", 98.0)  # a tick from an older ticker, without an expiry, still runs
    assert not skipped("plain", 99.5, expires_at=100.5)  # only actors declared tick=True


def test_a_slow_check_is_not_run_twice_at_once() -> None:
    entered = threading.Event()
    release = threading.Event()
    runs: list[float] = []

    def slow_check(slot_ts: float, expires_at: float | None = None) -> None:
        runs.append(slot_ts)
        entered.set()
        release.wait(10)

    guarded = one_at_a_time(slow_check)
    first = threading.Thread(target=guarded, args=(1.0,))
    first.start()
    assert entered.wait(5)
    started = time.monotonic()
    guarded(2.0)  # the previous check still runs: skipped at once, not queued behind it
    skipped_in = time.monotonic() - started
    release.set()
    first.join(5)
    guarded(3.0)

    assert skipped_in < 1
    assert runs == [1.0, 3.0]


def test_worker_runs_fresh_ticks_and_drops_stale_ones_without_dead_letters(
    brokers: list[CodaBroker],
) -> None:
    broker = brokers[0]
    ran: list[float] = []
    done = threading.Event()

    def beat(slot_ts: float, expires_at: float | None = None) -> None:
        ran.append(slot_ts)
        done.set()

    broker.add_middleware(StaleTicks())
    dramatiq.actor(beat, broker=broker, actor_name="heartbeat", queue_name=CONTROL_QUEUE, tick=True)
    real_now = time.time()
    stale = Ticker(broker, QPU, [Tick("heartbeat", 1.0)])
    assert stale.tick_once(real_now - 30) == ["heartbeat"]  # a tick that waited 30 s in the queue
    fresh = Ticker(broker, QPU, [Tick("heartbeat", 1_000_000.0)])
    assert fresh.tick_once(real_now) == ["heartbeat"]

    worker = Worker(broker, queues={CONTROL_QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(done.is_set, 10, "the fresh tick to run")
        wait_until(lambda: not queued(broker), 5, "the control queue to drain")
        worker.join()
    finally:
        worker.stop()

    assert ran == [int(real_now // 1_000_000.0) * 1_000_000.0], "only the fresh tick ran"
    dead = broker.client.zcard(f"{broker.namespace}:{CONTROL_QUEUE}.XQ")
    assert dead == 0, "a stale tick was dead-lettered"


def test_ticker_thread_ticks_on_the_clock_and_stops(brokers: list[CodaBroker]) -> None:
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 0.2)])
    started = time.time()
    ticker.start()
    try:
        wait_until(lambda: ticker.sent >= 5, 5, "five ticks")
    finally:
        ticker.stop()
        ticker.join(2)  # threading.Thread.join calls self._stop(): the ticker must not shadow it
    elapsed = time.time() - started

    assert not ticker.is_alive()
    slots = sorted(m.args[0] for m in queued(brokers[0]))
    assert len(slots) == ticker.sent
    # on the 0.2 s clock, each slot once (a busy machine may make the thread miss one: it is skipped)
    steps = [(b - a) / 0.2 for a, b in itertools.pairwise(slots)]
    assert all(round(step) >= 1 and step == pytest.approx(round(step)) for step in steps), steps
    assert ticker.sent <= elapsed / 0.2 + 2
