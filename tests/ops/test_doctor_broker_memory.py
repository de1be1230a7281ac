"""`doctor` checks the broker's maxmemory and policy (issue 23, item 1), on a private redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from coda_bridge.devtools.localredis import LocalRedis, free_port
from coda_bridge.ops.doctor import check_broker_memory
from coda_bridge.queueing.sizing import memory_finding


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as private:
        yield private


@pytest.fixture
def client(server: LocalRedis) -> Iterator[redis.Redis]:
    handle = redis.Redis(port=server.port)
    yield handle
    handle.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
def test_an_evicting_policy_fails_the_check_saying_jobs_can_run_twice(
    server: LocalRedis, client: redis.Redis, policy: str
) -> None:
    # given a broker that evicts keys under memory pressure
    client.config_set("maxmemory", "100mb")
    client.config_set("maxmemory-policy", policy)
    # when doctor looks at it
    check = check_broker_memory(server.url)
    # then it fails, naming the policy, the consequence and the fix
    assert check is not None and not check.ok
    assert check.line().startswith(f"FIX: broker memory: maxmemory-policy is {policy}")
    assert "jobs can run twice" in check.detail
    assert "set maxmemory-policy noeviction" in check.detail


def test_no_memory_limit_is_a_warning_and_a_sized_noeviction_broker_is_ok(
    server: LocalRedis, client: redis.Redis
) -> None:
    # given a broker with noeviction and no limit
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "0")
    unlimited = check_broker_memory(server.url)
    # when it gets a limit with room
    client.config_set("maxmemory", "256mb")
    sized = check_broker_memory(server.url)
    # then the first warns that it can grow until the host runs out, the second is ok
    assert unlimited is not None and unlimited.warning and "no maxmemory" in unlimited.detail
    assert sized is not None and not sized.warning
    assert sized.line().startswith("ok   broker memory: ")
    assert "of maxmemory 256.00M, policy noeviction" in sized.detail


def test_a_broker_near_its_limit_is_a_warning() -> None:
    info = {"maxmemory_policy": "noeviction", "maxmemory": 1000, "used_memory": 900}
    finding = memory_finding(info)
    assert finding.warning
    assert "near the limit" in finding.detail


def test_a_broker_that_does_not_answer_is_left_to_the_ping_check() -> None:
    assert check_broker_memory(f"redis://127.0.0.1:{free_port()}/0") is None
