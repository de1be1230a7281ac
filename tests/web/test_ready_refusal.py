"""``/ready`` and ``/metrics`` name a broker that answers but refuses writes (issue 23, item 1).

The probes app through Flask's test client, on a private redis-server whose
``maxmemory`` is forced below its use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState
from coda_bridge.state.registry import Registration
from coda_bridge.web import probes_app as web

QPU = "qpu-refusing"


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as private:
        yield private


@pytest.fixture
def state(server: LocalRedis) -> Iterator[NodeState]:
    client = redis.Redis(port=server.port)
    client.config_set("maxmemory-policy", "noeviction")
    node = NodeState(client, QPU)
    node.set_vpn_state("ready", 300)
    node.stream_read()
    Registration(client, QPU, "jobs", ttl_sec=300).executor_built()  # a jobs worker, executor built
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
        client.xgroup_create(stream_key(QPU), group_name(QPU), id="0", mkstream=True)
    yield node
    client.config_set("maxmemory", "0")
    client.close()


@pytest.fixture
def app(server: LocalRedis, state: NodeState) -> Flask:
    settings = Settings(qpu_id=QPU, redis_url=server.url, broker_url=server.url, ready_stream_stale_sec=300)
    return web.create_app(settings)


def refusing(families: str) -> dict[str, float]:
    return {
        sample.labels["cause"]: sample.value
        for family in text_string_to_metric_families(families)
        if family.name == "coda_broker_refusing_writes"
        for sample in family.samples
    }


def test_ready_names_a_broker_at_maxmemory_until_memory_returns(app: Flask, state: NodeState) -> None:
    client = app.test_client()
    # given a ready node
    assert client.get("/ready").status_code == 200
    assert refusing(client.get("/metrics").get_data(as_text=True)) == {"": 0.0}
    # when its broker reaches maxmemory under noeviction
    state.client.config_set("maxmemory", "1")
    refused = client.get("/ready")
    metrics = client.get("/metrics").get_data(as_text=True)
    state.client.config_set("maxmemory", "0")
    # then /ready says 503 and names the refusal, the limit and the policy; the gauge names OOM
    assert refused.status_code == 503
    reason = refused.get_json()["reason"]
    assert reason.startswith("the local broker refuses writes: OOM command not allowed")
    assert "policy noeviction" in reason
    assert refusing(metrics) == {"OOM": 1.0}
    # and once memory returns, it is ready again
    assert client.get("/ready").status_code == 200
