"""The broker through Redis Sentinel (issue 25, item 6): real redis-server and redis-sentinel processes.

A primary, one replica and three sentinels (quorum 2) per test; the
failover is either a SIGKILL of the primary or ``SENTINEL FAILOVER`` (the
old primary stays up as a replica and answers writes with ``READONLY``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from redis.sentinel import Sentinel

from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.devtools.localsentinel import SERVICE, LocalSentinel
from coda_bridge.devtools.stack import wait_until
from coda_bridge.ops.doctor import check_redis, shown_url
from coda_bridge.queueing.broker_client import broker_client, sentinel_primary
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.settings import Settings

pytestmark = pytest.mark.skipif(
    shutil.which("redis-sentinel") is None,
    reason="redis-sentinel is not installed (Debian: apt-get install redis-sentinel; .ci/run does it)",
)

QPU = "qpu-sentinel"
#: How long a client may take to reach the promoted replica.
RECOVER_SEC = 30.0


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    with LocalSentinel() as deployment:
        yield deployment


def _messages(broker: dramatiq.Broker) -> int:
    return int(broker.client.llen(f"{broker.namespace}:jobs"))


@pytest.mark.e2e
def test_the_broker_enqueues_on_the_promoted_replica_after_the_primary_is_killed(
    sentinel: LocalSentinel,
) -> None:
    # given a node's broker on the sentinels' primary, with one message enqueued
    broker = create_broker(Settings(broker_url=sentinel.url, qpu_id=QPU), qpu_id=QPU)
    message = dramatiq.Message(queue_name="jobs", actor_name="x", args=(), kwargs={}, options={})
    broker.enqueue(message)
    first = sentinel_primary(broker.client)
    wait_until(lambda: _replicated(sentinel), 10, "the replica to hold the message")
    try:
        # when the primary is killed -9 and the sentinels promote the replica
        old = sentinel.kill_primary()
        new = sentinel.wait_promoted(old)

        # then the same broker enqueues again (the dispatch script on the new primary) and finds both
        wait_until(lambda: _enqueued(broker, message), RECOVER_SEC, "an enqueue on the new primary")
        assert first == ("127.0.0.1", old)
        assert sentinel_primary(broker.client) == ("127.0.0.1", new)
        assert _messages(broker) == 2
    finally:
        broker.close()


@pytest.mark.e2e
def test_the_broker_follows_a_coordinated_failover(sentinel: LocalSentinel) -> None:
    # given a broker whose connection is open on the primary
    broker = create_broker(Settings(broker_url=sentinel.url, qpu_id=QPU), qpu_id=QPU)
    message = dramatiq.Message(queue_name="jobs", actor_name="x", args=(), kwargs={}, options={})
    broker.enqueue(message)
    old = sentinel.primary_port()
    try:
        # when the sentinels hand the primary role over, the old primary staying up as a replica
        with broker_client(f"redis://127.0.0.1:{sentinel.sentinel_ports[0]}/0") as one:
            one.execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = sentinel.wait_promoted(old)
        wait_until(lambda: _is_replica(old), RECOVER_SEC, "the old primary to follow the new one")

        # then the next enqueue lands on the new primary
        broker.enqueue(message)
        assert sentinel_primary(broker.client) == ("127.0.0.1", new)
        assert _messages(broker) == 2
    finally:
        broker.close()


def test_a_primary_answering_readonly_inside_a_script_is_left_for_the_one_the_sentinels_name_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a replica the sentinels still name (a stale answer), and the real primary they name next
    with LocalRedis() as primary, LocalRedis() as replica:
        with replica.client() as client:
            client.replicaof("127.0.0.1", primary.port)
        answers = [("127.0.0.1", replica.port), ("127.0.0.1", primary.port)]
        asked: list[tuple[str, int]] = []

        def discover_master(self: Sentinel, service: str) -> tuple[str, int]:
            asked.append(answers[min(len(asked), 1)])
            return asked[-1]

        monkeypatch.setattr(Sentinel, "discover_master", discover_master)
        client = broker_client("redis+sentinel://127.0.0.1:1/coda-broker/0")
        write = client.register_script("return redis.call('set', KEYS[1], ARGV[1])")

        # when a script writes (Redis 6.2 answers "ERR Error running script ... -READONLY ...")
        with pytest.raises(redis.ConnectionError):  # an outage, as redis-py makes a plain READONLY
            write(keys=["k"], args=["v"])
        write(keys=["k"], args=["v"])

        # then the connection was dropped, the sentinels asked again, and the next write reached the primary
        assert asked == answers
        with primary.client() as check:
            assert check.get("k") == "v"
        client.close()


@pytest.mark.e2e
def test_doctor_names_the_primary_the_sentinels_discovered(sentinel: LocalSentinel) -> None:
    # given a deployment whose primary was killed and replaced
    old = sentinel.kill_primary()
    new = sentinel.wait_promoted(old)

    # when doctor checks the broker
    check = check_redis("broker", sentinel.url, "fix it")

    # then it names the new primary
    assert check.ok, check.detail
    assert f"primary 127.0.0.1:{new}" in check.detail


def test_doctor_says_when_no_sentinel_answers() -> None:
    url = "redis+sentinel://:s3cr3t-pw@127.0.0.1:1,127.0.0.1:2/coda-broker/0"

    check = check_redis("broker", url, "start the sentinels")

    assert not check.ok
    assert "start the sentinels" in check.detail
    assert "s3cr3t-pw" not in check.detail
    assert shown_url(url) == "redis+sentinel://127.0.0.1:1,127.0.0.1:2/coda-broker/0"


def _replicated(sentinel: LocalSentinel) -> bool:
    with sentinel.servers[1].client() as replica:
        return bool(replica.dbsize())


def _enqueued(broker: dramatiq.Broker, message: dramatiq.Message) -> bool:  # type: ignore[type-arg]
    try:
        broker.enqueue(message)
    except redis.RedisError:  # the new primary is not reachable yet: look again
        return False
    return True


def _is_replica(port: int) -> bool:
    """Whether the server follows another; a server changing role closes its clients: not yet."""
    try:
        with broker_client(f"redis://127.0.0.1:{port}/0") as client:
            return bool(client.role()[0] == b"slave")
    except (redis.ConnectionError, OSError):
        return False
