"""A broker that evicts keys is named: its policy, the keys it evicted (issue 23, "broker allkeys-lru").

On a private redis-server per test (its policy and memory are changed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.queueing.eviction import EvictionWatch, read_eviction
from coda_bridge.settings import Settings
from coda_bridge.web import probes_app as web

LOGGER = "coda_bridge.queueing.eviction"


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as private:
        yield private


@pytest.fixture
def client(server: LocalRedis) -> Iterator[redis.Redis]:
    handle = redis.Redis(port=server.port)
    yield handle
    handle.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_an_evicting_policy_is_one_warning_naming_it_and_the_fix(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # given a broker with allkeys-lru
    client.config_set("maxmemory-policy", "allkeys-lru")
    watch = EvictionWatch(client, interval_sec=0)

    # when the watch reads it three times
    with caplog.at_level(logging.INFO, logger=LOGGER):
        found = [watch() for _ in range(3)]

    # then it evicts, and one WARNING line says so, what it costs and what to do
    assert all(f.evicting and f.policy == "allkeys-lru" for f in found)
    [line] = warnings(caplog)
    assert "The local broker evicts keys (maxmemory-policy allkeys-lru" in line
    assert "jobs run twice" in line and "set maxmemory-policy noeviction" in line


def test_noeviction_is_quiet(client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    client.config_set("maxmemory-policy", "noeviction")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        found = EvictionWatch(client)()

    assert not found.evicting and found.policy == "noeviction"
    assert warnings(caplog) == []


def test_the_policy_is_read_from_info_where_config_is_refused(
    server: LocalRedis, client: redis.Redis
) -> None:
    # given a managed broker whose user may not run CONFIG
    client.config_set("maxmemory-policy", "volatile-lru")
    client.acl_setuser(
        "managed", enabled=True, passwords=["+pw-of-test"], keys=["*"], commands=["+@all", "-config"]
    )
    managed = redis.Redis(port=server.port, username="managed", password="pw-of-test")
    with pytest.raises(redis.ResponseError):
        managed.config_get("maxmemory-policy")

    # when the eviction state is read as that user
    found = read_eviction(managed)
    managed.close()

    # then the policy still comes (from INFO memory)
    assert found.policy == "volatile-lru" and found.evicting


def test_keys_evicted_between_two_readings_are_a_warning_and_a_metric(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # given a watched broker with allkeys-lru and a small maxmemory
    client.config_set("maxmemory-policy", "allkeys-lru")
    watch = EvictionWatch(client, interval_sec=0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(watch)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        watch()
        used: Any = client.info("memory")
        client.config_set("maxmemory", int(used["used_memory"]) + 512 * 1024)

        # when more is written than fits
        for n in range(400):
            client.set(f"filler-{n}", "x" * 4096)
        assert int(client.info("stats")["evicted_keys"]) > 0
        found = watch()
        text = generate_latest(registry).decode()

    # then a WARNING says how many keys it evicted, and /metrics has the policy and the count
    evicted = [line for line in warnings(caplog) if "evicted" in line and "keys in the last" in line]
    assert evicted and f"evicted {found.evicted_keys} keys" in evicted[0]
    assert 'coda_broker_evicting{policy="allkeys-lru"} 1.0' in text
    assert f"coda_broker_evicted_keys_total {float(found.evicted_keys or 0)}" in text


def test_the_watch_reads_once_per_interval(client: redis.Redis) -> None:
    # given a watch on a noeviction broker, read once
    now = [0.0]
    watch = EvictionWatch(client, interval_sec=30, clock=lambda: now[0])
    client.config_set("maxmemory-policy", "noeviction")
    first = watch()
    client.config_set("maxmemory-policy", "allkeys-lfu")

    # when asked again within the interval, then past it
    within = watch()
    now[0] = 31.0
    past = watch()

    # then the first answer stands until the interval passed
    assert (first.policy, within.policy, past.policy) == ("noeviction", "noeviction", "allkeys-lfu")


def test_ready_names_the_evicting_policy_in_its_body(server: LocalRedis, client: redis.Redis) -> None:
    # given the probes app of a node whose broker has allkeys-lru
    values: dict[str, Any] = {"qpu_id": "qpu-evict", "redis_url": server.url, "broker_url": server.url}
    app = web.create_app(Settings(**values))
    client.config_set("maxmemory-policy", "allkeys-lru")

    # when /ready is asked
    body = app.test_client().get("/ready").get_json()

    # then its body names the policy
    assert body["broker_eviction_policy"] == "allkeys-lru"
