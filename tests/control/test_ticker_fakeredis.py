"""The ticker on fakeredis (dramatiq's Lua enqueue included), with fake clocks and no sleeps.

One tick per slot however many tickers race for it, slot leases, stale
ticks skipped by the ``StaleTicks`` middleware, ``one_at_a_time``, and a
ticker loop that survives a broker that fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import fakeredis
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage

from coda_bridge.control.ticker import MIN_LEASE_MS, Tick, Ticker, one_at_a_time, tick_message
from coda_bridge.queueing.middleware import StaleTicks
from coda_bridge.queueing.redis_broker import CodaBroker, broker_namespace
from coda_bridge.state.broker_keys import tick_key

QPU = "qpu-tick"
CONTROL = "control"
#: A fake wall clock a quarter second into a slot of every interval below.
T0 = 1_800_000_000.25


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def make_broker(server: fakeredis.FakeServer) -> CodaBroker:
    """A broker with its own connection to the shared fake server, as another process would have."""
    broker = CodaBroker(
        client=fakeredis.FakeRedis(server=server), namespace=broker_namespace(QPU), middleware=[]
    )
    broker.declare_queue(CONTROL)
    return broker


@pytest.fixture
def brokers(server: fakeredis.FakeServer) -> Iterator[list[CodaBroker]]:
    made = [make_broker(server), make_broker(server)]
    yield made
    for broker in made:
        broker.client.close()


def queued(broker: CodaBroker) -> list[Message[Any]]:
    """Messages waiting in the control queue, decoded, in queue order."""
    client = broker.client
    ids = client.lrange(f"{broker.namespace}:{CONTROL}", 0, -1)
    raw = client.hmget(f"{broker.namespace}:{CONTROL}.msgs", ids) if ids else []
    return [Message.decode(data) for data in raw]


# -- one tick per slot --


def test_two_tickers_send_each_slot_of_each_tick_exactly_once(brokers: list[CodaBroker]) -> None:
    # given two tickers (two processes) with a 1 s and a 2 s tick, on one broker Redis
    ticks = [Tick("heartbeat", 1.0), Tick("vpn_check", 2.0)]
    first, second = (Ticker(broker, QPU, ticks) for broker in brokers)
    sent: Counter[tuple[str, float]] = Counter()

    # when both wake every half second for 10 s of fake time, in alternating order
    for step in range(20):
        now = T0 + step * 0.5
        order = (first, second) if (step // 2) % 2 else (second, first)  # who wakes first changes per slot
        for ticker in order:
            ticker.tick_once(now)

    # then each slot of each tick reached the queue exactly once
    for message in queued(brokers[0]):
        sent[(message.actor_name, message.args[0])] += 1
    heartbeats = {("heartbeat", float(s)) for s in range(int(T0), int(T0 + 9.5) + 1)}
    vpn_checks = {("vpn_check", 2.0 * s) for s in range(int(T0 // 2), int((T0 + 9.5) // 2) + 1)}
    assert set(sent) == heartbeats | vpn_checks
    assert set(sent.values()) == {1}
    assert first.sent + second.sent == len(heartbeats) + len(vpn_checks)
    assert first.lost + second.lost == len(heartbeats) + len(vpn_checks)  # the other one lost every slot
    assert first.sent > 0 and second.sent > 0  # both won some: the alternation mattered


def test_tickers_racing_in_threads_still_send_each_slot_once(brokers: list[CodaBroker]) -> None:
    # given two tickers in two threads released together
    slots = 200
    tickers = [Ticker(broker, QPU, [Tick("heartbeat", 1.0)]) for broker in brokers]
    start = threading.Barrier(len(tickers))

    def run(ticker: Ticker) -> None:
        start.wait(5)
        for slot in range(slots):
            ticker.tick_once(T0 + slot)

    threads = [threading.Thread(target=run, args=(t,)) for t in tickers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # when the queue is read
    beats = Counter(m.args[0] for m in queued(brokers[0]))

    # then every slot is there once: SET NX let exactly one of them win each
    assert sorted(beats) == [float(int(T0) + s) for s in range(slots)]
    assert set(beats.values()) == {1}
    assert sum(t.sent for t in tickers) == slots
    assert sum(t.lost for t in tickers) == slots


def test_a_tick_message_carries_its_slot_start_and_expiry_on_the_control_queue(
    brokers: list[CodaBroker],
) -> None:
    # given a 30 s heartbeat tick
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 30.0)])

    # when it ticks a quarter second into a slot
    assert ticker.tick_once(T0) == ["heartbeat"]

    # then the message names the slot's start and the end of its interval, and has no age limit
    (message,) = queued(brokers[0])
    slot_start = (T0 // 30) * 30
    assert message.queue_name == CONTROL
    assert message.actor_name == "heartbeat"
    assert message.args == (slot_start,)
    assert message.kwargs == {"expires_at": slot_start + 30}
    assert "max_age" not in message.options


def test_tick_message_of_a_slot_is_pure_arithmetic() -> None:
    message = tick_message(Tick("vpn_check", 10.0), 180_000_000)
    assert (message.queue_name, message.actor_name) == (CONTROL, "vpn_check")
    assert message.args == (1_800_000_000.0,)
    assert message.kwargs == {"expires_at": 1_800_000_010.0}


def test_a_slot_is_sent_once_by_one_ticker_and_missed_slots_are_not_replayed(
    brokers: list[CodaBroker],
) -> None:
    # given one ticker
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 1.0)])

    # when it wakes twice in one slot, then again after a 30 s stall
    results = [ticker.tick_once(T0), ticker.tick_once(T0 + 0.7), ticker.tick_once(T0 + 30.1)]

    # then the slot went once, and after the stall only the current slot (no burst of 29 late ticks)
    assert results == [["heartbeat"], [], ["heartbeat"]]
    assert [m.args[0] for m in queued(brokers[0])] == [float(int(T0)), float(int(T0) + 30)]
    assert ticker.lost == 0  # a repeat within a slot is not even a contest


def test_a_slot_another_ticker_took_is_lost_not_sent(brokers: list[CodaBroker]) -> None:
    # given another process already holds this slot's key
    brokers[1].client.set(tick_key(QPU, "heartbeat", int(T0)), "1")
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 1.0)])

    # when this ticker wakes in that slot, and in the next
    assert ticker.tick_once(T0) == []
    assert ticker.tick_once(T0 + 1) == ["heartbeat"]

    # then it counted one loss and one send
    assert (ticker.lost, ticker.sent) == (1, 1)


@pytest.mark.parametrize(("interval", "lease_ms"), [(3.0, 6000), (30.0, 60_000), (0.2, MIN_LEASE_MS)])
def test_a_slot_key_is_leased_for_two_intervals_and_at_least_a_second(
    brokers: list[CodaBroker], interval: float, lease_ms: int
) -> None:
    # when a tick takes its slot
    Ticker(brokers[0], QPU, [Tick("heartbeat", interval)]).tick_once(T0)

    # then the key lives two intervals (a ticker whose clock lags still finds it), never under a second
    ttl = brokers[0].client.pttl(tick_key(QPU, "heartbeat", int(T0 // interval)))
    assert lease_ms - 50 < ttl <= lease_ms


def test_the_ticker_sleeps_until_the_soonest_next_slot(
    brokers: list[CodaBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a 1 s and a 10 s tick, both sent at T0
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 1.0), Tick("vpn_check", 10.0)])
    ticker.tick_once(T0)

    # when it asks how long to wait, 0.25 s into the slot
    monkeypatch.setattr(time, "time", lambda: T0)

    # then it waits for the heartbeat's next boundary
    assert ticker._sleep_time() == pytest.approx(0.75)


# -- stale ticks (the StaleTicks middleware) --


@pytest.fixture
def clock() -> list[float]:
    return [T0]


@pytest.fixture
def worker_broker(server: fakeredis.FakeServer, clock: list[float]) -> Iterator[CodaBroker]:
    """A control worker's broker: StaleTicks on a fake clock, a tick actor and a plain one."""
    broker = CodaBroker(
        client=fakeredis.FakeRedis(server=server),
        namespace=broker_namespace(QPU),
        middleware=[StaleTicks(clock=lambda: clock[0])],
    )
    broker.declare_queue(CONTROL)
    dramatiq.actor(lambda *a, **k: None, broker=broker, actor_name="heartbeat", queue_name=CONTROL, tick=True)
    dramatiq.actor(lambda *a, **k: None, broker=broker, actor_name="report", queue_name=CONTROL)
    yield broker
    broker.client.close()


def skipped(broker: CodaBroker, message: Message[Any]) -> bool:
    """Whether the worker's middleware skips ``message`` (acknowledged, never run) before processing."""
    try:
        broker.emit_before("process_message", MessageProxy(message))
    except SkipMessage:
        return True
    return False


def test_a_tick_that_waited_past_its_slot_is_skipped_with_a_log(
    brokers: list[CodaBroker], worker_broker: CodaBroker, clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    # given a heartbeat tick the ticker put on the queue
    Ticker(brokers[0], QPU, [Tick("heartbeat", 1.0)]).tick_once(T0)
    (message,) = queued(brokers[0])

    # when a worker gets it within its slot, it runs
    assert not skipped(worker_broker, message)

    # when a worker gets it (a redelivery, or after a stall) 2.5 s after its slot ended
    clock[0] = message.kwargs["expires_at"] + 2.5
    with caplog.at_level(logging.INFO, logger="coda_bridge.queueing.middleware"):
        late = skipped(worker_broker, message)

    # then it is skipped (SkipMessage: acknowledged, not failed, so never dead-lettered), and logged
    assert late
    assert "Dropped a stale heartbeat tick (slot of 1800000000, 2.5 s past its interval)." in caplog.text


@pytest.mark.parametrize(("now", "runs"), [(100.999, True), (101.0, False), (160.0, False)])
def test_a_tick_is_stale_from_the_moment_its_interval_ends(
    worker_broker: CodaBroker, clock: list[float], now: float, runs: bool
) -> None:
    clock[0] = now
    message = tick_message(Tick("heartbeat", 1.0), 100)  # slot [100, 101)
    assert skipped(worker_broker, message) is not runs


def test_a_tick_without_an_expiry_always_runs(worker_broker: CodaBroker, clock: list[float]) -> None:
    # given a tick from an older ticker, without expires_at, delivered very late
    clock[0] = 1e12
    message = dramatiq.Message(
        queue_name=CONTROL, actor_name="heartbeat", args=(100.0,), kwargs={}, options={}
    )

    # then it runs
    assert not skipped(worker_broker, message)


def test_only_actors_declared_as_ticks_are_ever_skipped(
    worker_broker: CodaBroker, clock: list[float]
) -> None:
    # given a message of an ordinary actor that happens to carry an expires_at in the past
    clock[0] = T0
    message = dramatiq.Message(
        queue_name=CONTROL, actor_name="report", args=(1.0,), kwargs={"expires_at": T0 - 60}, options={}
    )

    # then it runs
    assert not skipped(worker_broker, message)


# -- one at a time --


def test_a_tick_that_arrives_while_the_previous_one_runs_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    # given a check that, while running, receives the next tick (as a second control thread would)
    runs: list[float] = []

    def vpn_check(slot_ts: float, expires_at: float | None = None) -> None:
        runs.append(slot_ts)
        if slot_ts == 1.0:
            guarded(2.0)

    guarded = one_at_a_time(vpn_check)

    # when the first tick runs, and a third comes after it finished
    with caplog.at_level(logging.WARNING, logger="coda_bridge.control.ticker"):
        guarded(1.0)
    guarded(3.0)

    # then the overlapping tick was skipped with a warning, not queued, and the later one ran
    assert runs == [1.0, 3.0]
    assert "Skipped a vpn_check tick: the previous one is still running." in caplog.text


def test_a_skipped_tick_returns_at_once_while_another_thread_runs_the_check() -> None:
    # given a check held open by another thread
    entered, release = threading.Event(), threading.Event()
    runs: list[float] = []

    def vpn_check(slot_ts: float, expires_at: float | None = None) -> None:
        runs.append(slot_ts)
        entered.set()
        release.wait(10)

    guarded = one_at_a_time(vpn_check)
    holder = threading.Thread(target=guarded, args=(1.0,))
    holder.start()
    assert entered.wait(10)

    # when this thread gets the next tick
    guarded(2.0)  # returns without waiting: if it blocked, release would never be set below

    # then it did not run; the holder finishes normally
    release.set()
    holder.join(10)
    assert runs == [1.0]


def test_a_check_that_raises_does_not_block_the_next_one() -> None:
    # given a check that fails once
    runs: list[float] = []

    def vpn_check(slot_ts: float, expires_at: float | None = None) -> None:
        runs.append(slot_ts)
        if slot_ts == 1.0:
            raise RuntimeError("probe crashed")

    guarded = one_at_a_time(vpn_check)

    # when it fails, then the next tick comes
    with pytest.raises(RuntimeError, match="probe crashed"):
        guarded(1.0)
    guarded(2.0)

    # then the next one ran: the failure released the guard
    assert runs == [1.0, 2.0]


def test_each_guarded_task_has_its_own_guard() -> None:
    # given two guarded tasks, the first calling the second while it runs
    runs: list[str] = []
    second = one_at_a_time(lambda slot_ts, expires_at=None: runs.append("second"))

    def first_task(slot_ts: float, expires_at: float | None = None) -> None:
        runs.append("first")
        second(slot_ts)

    # when the first runs
    one_at_a_time(first_task)(1.0)

    # then the second was not skipped: only the same task is kept from overlapping
    assert runs == ["first", "second"]


# -- the ticker loop --


class InstantEvent(threading.Event):
    """An Event whose wait returns at once and records how long it was asked to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout if timeout is not None else -1.0)
        return self.is_set()


def test_the_ticker_loop_outlives_broker_errors_and_other_failures(
    brokers: list[CodaBroker], caplog: pytest.LogCaptureFixture
) -> None:
    # given a ticker whose first tick hits a broker outage and whose second hits a bug
    ticker = Ticker(brokers[0], QPU, [Tick("heartbeat", 1.0)])
    ticker._stopping = InstantEvent()
    failures: list[BaseException] = [redis.ConnectionError("broker gone"), ValueError("bad tick")]
    calls: list[float | None] = []

    def tick_once(now: float | None = None) -> list[str]:
        calls.append(now)
        if failures:
            raise failures.pop(0)
        ticker.stop()
        return []

    ticker.tick_once = tick_once  # type: ignore[method-assign]

    # when its loop runs (in this thread)
    with caplog.at_level(logging.WARNING, logger="coda_bridge.control.ticker"):
        ticker.run()

    # then it waited 1 s after each failure, kept going, and stopped when asked
    assert len(calls) == 3
    assert ticker._stopping.waits[:2] == [1.0, 1.0]
    assert "Ticker cannot reach the broker: broker gone" in caplog.text
    assert "Ticker failed to send a tick; going on." in caplog.text
