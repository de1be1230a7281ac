"""A broker Redis that refuses writes (maxmemory reached under noeviction) is waited out (issue 23, item 1).

A private redis-server per test: ``CONFIG SET maxmemory`` forces the refusal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis

from coda_bridge.devtools.localredis import LocalRedis, free_port
from coda_bridge.devtools.stack import wait_until
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.queueing.refusal import WriteProbe, refusal
from coda_bridge.settings import Settings

QPU = "qpu-refusal"
#: How long a test waits for the in-process worker (dramatiq retries an acknowledgement every 5 s).
WORKER_WAIT_SEC = 30.0
#: The in-process worker's idle poll.
WORKER_POLL_MS = 50
JOBS = 6
#: How long the delayed message of a test waits.
DELAY_MS = 500


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as private:
        yield private


@pytest.fixture
def client(server: LocalRedis) -> Iterator[redis.Redis]:
    handle = redis.Redis(port=server.port)
    handle.config_set("maxmemory-policy", "noeviction")
    yield handle
    handle.close()


def refuse_writes(client: redis.Redis) -> None:
    client.config_set("maxmemory", "1")


def take_writes(client: redis.Redis) -> None:
    client.config_set("maxmemory", "0")


def test_refusals_are_named_and_other_errors_are_not(client: redis.Redis) -> None:
    # given a broker at maxmemory under noeviction
    client.set("big", "x" * 10_000)
    refuse_writes(client)
    try:
        # when a plain write and a write inside a Lua script (as dramatiq's dispatch) are refused
        with pytest.raises(redis.ResponseError) as plain:
            client.set("k", "v")
        with pytest.raises(redis.ResponseError) as scripted:
            client.eval("return redis.call('SET', 'k', 'v')", 0)
    finally:
        take_writes(client)
    # then both read as an OOM refusal, and a wrong command does not
    assert str(refusal(plain.value)).startswith("OOM command not allowed")
    assert str(refusal(scripted.value)).startswith("OOM command not allowed")
    with pytest.raises(redis.ResponseError) as wrong:
        client.execute_command("NOSUCHCOMMAND")
    assert refusal(wrong.value) is None
    assert refusal(redis.ConnectionError("gone")) is None


def test_the_probe_names_the_refusal_in_one_warning_until_writes_pass_again(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # given a probe of a broker that takes writes
    probe = WriteProbe(client, "coda-bridge:probe")
    assert probe() is None
    caplog.set_level(logging.INFO, logger="coda_bridge.queueing.refusal")
    # when the broker refuses writes and is probed three times
    refuse_writes(client)
    try:
        reasons = [probe() for _ in range(3)]
    finally:
        take_writes(client)
    # then each probe names OOM, maxmemory and the policy, and one WARNING line says it once
    assert all(r is not None and r.startswith("the local broker refuses writes: OOM") for r in reasons)
    assert "policy noeviction" in str(reasons[0])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.getMessage() for w in warnings] == [reasons[0]]
    # and once it takes writes again, the probe says so, in one INFO line
    assert probe() is None
    assert caplog.records[-1].getMessage() == "The local broker takes writes again."


@pytest.fixture
def worker(server: LocalRedis, client: redis.Redis) -> Iterator[tuple[Any, Any, threading.Event, list[int]]]:
    """The node's broker and a worker with one actor that waits for ``release`` and notes its argument."""
    settings = Settings(qpu_id=QPU, broker_url=server.url, redis_url=server.url)
    broker = create_broker(settings)
    release = threading.Event()
    ran: list[int] = []

    def work(number: int, fail: bool) -> None:
        release.wait(WORKER_WAIT_SEC)
        ran.append(number)
        if fail:
            raise RuntimeError("this job fails (its message is handed back)")

    actor = dramatiq.actor(work, broker=broker, actor_name="work", queue_name="jobs", max_retries=0)
    running = dramatiq.Worker(broker, queues=["jobs"], worker_threads=JOBS, worker_timeout=WORKER_POLL_MS)
    running.start()
    try:
        yield broker, actor, release, ran
    finally:
        release.set()
        take_writes(client)
        running.stop()
        broker.client.close()


@pytest.mark.e2e
def test_acknowledgements_refused_at_maxmemory_pass_once_memory_returns(
    client: redis.Redis, worker: tuple[Any, Any, threading.Event, list[int]]
) -> None:
    broker, actor, release, ran = worker
    # given jobs running (half will fail and be handed back, half succeed) on a worker of the node's broker
    for number in range(JOBS):
        actor.send(number, number % 2 == 1)
    messages = f"{broker.namespace}:jobs.msgs"
    wait_until(lambda: client.llen(f"{broker.namespace}:jobs") == 0, WORKER_WAIT_SEC, "every job fetched")
    # when the broker refuses writes as they end, for a while
    refuse_writes(client)
    release.set()
    wait_until(lambda: len(ran) == JOBS, WORKER_WAIT_SEC, "every job to end")
    assert client.hlen(messages) == JOBS  # no acknowledgement passed
    take_writes(client)
    # then every acknowledgement and hand-back passes without a restart, and no job ran twice
    wait_until(lambda: client.hlen(messages) == 0, WORKER_WAIT_SEC, "every message acknowledged")
    acks = list(client.scan_iter(f"{broker.namespace}:__acks__.*"))
    assert all(client.scard(key) == 0 for key in acks)
    assert client.zcard(f"{broker.namespace}:jobs.XQ") == JOBS // 2  # the failed ones, dead-lettered
    assert sorted(ran) == list(range(JOBS))


def test_a_delayed_message_due_while_the_broker_refuses_writes_runs_once_memory_returns(
    client: redis.Redis, worker: tuple[Any, Any, threading.Event, list[int]]
) -> None:
    broker, actor, release, ran = worker
    release.set()
    # given a delayed message the worker holds in memory until it is due
    actor.send_with_options(args=(7, False), delay=DELAY_MS)
    wait_until(
        lambda: client.llen(f"{broker.namespace}:jobs.DQ") == 0, WORKER_WAIT_SEC, "the worker to hold it"
    )
    # when it falls due while the broker refuses writes
    refuse_writes(client)
    threading.Event().wait(DELAY_MS / 1000 * 3)  # past its eta: nothing to poll while it is refused
    assert ran == []
    take_writes(client)
    # then it runs, once, and nothing of it is left
    wait_until(lambda: ran == [7], WORKER_WAIT_SEC, "the delayed job to run")
    wait_until(
        lambda: client.hlen(f"{broker.namespace}:jobs.msgs") == 0, WORKER_WAIT_SEC, "its message acknowledged"
    )
    wait_until(
        lambda: client.hlen(f"{broker.namespace}:jobs.DQ.msgs") == 0, WORKER_WAIT_SEC, "the delayed one too"
    )
    assert ran == [7]


def test_a_read_only_replica_is_a_refusal_too(client: redis.Redis) -> None:
    # given a broker that became a replica (a failover put another primary in its place)
    client.replicaof("127.0.0.1", free_port())
    try:
        # when it is asked to take a write, directly and inside a script
        probe = WriteProbe(client, "coda-bridge:probe")
        reason = probe()
        with pytest.raises(redis.ResponseError) as scripted:
            client.eval("return redis.call('SET', 'k', 'v')", 0)
    finally:
        client.replicaof("NO", "ONE")
    # then both are READONLY refusals, and the probe names it
    assert str(reason).startswith("the local broker refuses writes: READONLY")
    assert str(refusal(scripted.value)).startswith("READONLY")
