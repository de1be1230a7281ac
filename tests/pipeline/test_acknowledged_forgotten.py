"""Every path that acknowledges a stream entry forgets its entry record, and a delivery that is over frees
its lease at once, on a real Redis (the cloud's and the broker's share one server here).

The cloud's HTTP answers come from requests-mock: what is under test is what the broker keeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests_mock as rm

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.pipeline.delivery import Deliverer
from coda_bridge.pipeline.intake import StreamBridge
from coda_bridge.pipeline.job_records import RecordStore
from coda_bridge.pipeline.status import CloudStatus
from coda_bridge.pipeline.timeline import Timeline
from coda_bridge.queueing.entry_index import EntryIndex
from coda_bridge.queueing.messages import delivery_message
from coda_bridge.queueing.redis_broker import CodaBroker, broker_namespace, create_broker
from coda_bridge.replies import as_text
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.broker_keys import delivery_lease_key, entry_key, job_key
from coda_bridge.state.node_state import NodeState

QPU = "qpu-acknowledged-forgotten"
BASE = "https://cloud.test"
CALLBACK = f"{BASE}/api/internal/qpu/webhook"
CONSUMER = "bridge-a"
RESULT = {"job_id": "j-1", "status": "completed", "counts": {"00": 10}}


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch, redis_url: str) -> Settings:
    return load_settings(
        overrides={
            "qpu_id": QPU,
            "redis_url": redis_url,
            "broker_url": redis_url,
            "consumer_name": CONSUMER,
            "webapp_url": BASE,
            "webhook_timeout_sec": 3,
            "claim_idle_sec": 60,
        }
    )


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(redis_url)
    yield made
    made.close()


@pytest.fixture
def broker(settings: Settings) -> Iterator[CodaBroker]:
    made = create_broker(settings)
    yield made
    made.close()


@pytest.fixture
def deliverer(settings: Settings, client: redis.Redis) -> Iterator[Deliverer]:
    cloud = CloudClient(settings, sleep=lambda _: None)
    yield Deliverer(
        settings,
        RecordStore(client, QPU),
        CloudStatus(client, QPU),
        cloud=cloud,
        signer=Signer(generate_private_key_pem(), f"{QPU}-1", QPU),
        state=NodeState(client, QPU),
        entries=EntryIndex(client, QPU, broker_namespace(QPU)),
        timeline=Timeline(client, QPU, retention_sec=settings.record_retention_sec),
    )
    cloud.close()


def pending_entry(client: redis.Redis, broker: CodaBroker) -> str:
    """A stream entry for j-1, read by the bridge's consumer and carried by a queued ``deliver`` message."""
    client.xgroup_create(stream_key(QPU), group_name(QPU), id="0", mkstream=True)
    entry_id = str(as_text(client.xadd(stream_key(QPU), {"job_id": "j-1", "callback_url": CALLBACK})))
    client.xreadgroup(group_name(QPU), CONSUMER, {stream_key(QPU): ">"})
    broker.enqueue_many([delivery_message("j-1", CALLBACK, entry_id)])
    assert client.exists(entry_key(QPU, entry_id)), "the enqueue records which message carries the entry"
    return entry_id


def pending(client: redis.Redis) -> int:
    info: Any = client.xpending(stream_key(QPU), group_name(QPU))
    return int(info["pending"])


def entry_records(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(entry_key(QPU, "0").removesuffix("0") + "*"))


def test_a_delivery_forgets_its_entry_and_frees_its_lease_once_the_cloud_has_the_state(
    deliverer: Deliverer, broker: CodaBroker, client: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # given a recorded result whose entry is pending and carried by a deliver message
    entry_id = pending_entry(client, broker)
    deliverer.records.record([("j-1", RESULT)])
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})
    # when it is delivered
    outcome = deliverer.deliver("j-1", CALLBACK, entry_id)
    # then the entry is acknowledged, its record forgotten, and the lease freed (the delivered mark stays)
    assert outcome == "delivered"
    assert pending(client) == 0
    assert entry_records(client) == []
    assert not client.exists(delivery_lease_key(QPU, "j-1"))
    assert client.hexists(job_key(QPU, "j-1"), "delivered")


def test_a_duplicate_delivery_forgets_the_entry_it_acknowledges(
    deliverer: Deliverer, broker: CodaBroker, client: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # given a result delivered before, whose entry is pending again and carried by a second deliver message
    entry_id = pending_entry(client, broker)
    deliverer.records.record([("j-1", RESULT)])
    client.hset(job_key(QPU, "j-1"), "delivered", "1")
    # when the duplicate is processed
    outcome = deliverer.deliver("j-1", CALLBACK, entry_id)
    # then nothing is posted, the entry is acknowledged and its record forgotten
    assert outcome == "duplicate"
    assert requests_mock.call_count == 0
    assert pending(client) == 0
    assert entry_records(client) == []


def test_reconcile_forgets_the_records_of_the_entries_it_acknowledges(
    settings: Settings, broker: CodaBroker, client: redis.Redis
) -> None:
    # given an entry whose result was delivered but whose acknowledgement was lost, its message gone
    bridge = StreamBridge(settings, broker, NodeState(broker.client, QPU))
    entry_id = pending_entry(client, broker)
    client.delete(f"{broker.namespace}:results", f"{broker.namespace}:results.msgs")
    client.hset(job_key(QPU, "j-1"), mapping={"result": json.dumps(RESULT), "delivered": "1"})
    # when a reconcile pass runs
    report = bridge.reconciler.run_once()
    # then it acknowledges the entry and forgets its record
    assert report.acknowledged == [entry_id]
    assert pending(client) == 0
    assert entry_records(client) == []


def test_reconcile_acknowledges_a_delivery_lost_after_its_post_without_waiting_out_the_lease(
    settings: Settings,
    deliverer: Deliverer,
    broker: CodaBroker,
    client: redis.Redis,
    requests_mock: rm.Mocker,
) -> None:
    # given a delivered result whose own acknowledgement the cloud lost (the entry is pending again)
    bridge = StreamBridge(settings, broker, NodeState(broker.client, QPU))
    entry_id = pending_entry(client, broker)
    deliverer.records.record([("j-1", RESULT)])
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})
    deliverer.deliver("j-1", CALLBACK, entry_id)
    client.delete(f"{broker.namespace}:results", f"{broker.namespace}:results.msgs")
    client.xclaim(stream_key(QPU), group_name(QPU), CONSUMER, 0, [entry_id], force=True, justid=True)
    assert pending(client) == 1
    # when a reconcile pass runs at once (well within the lease of webhook_timeout + margin)
    report = bridge.reconciler.run_once()
    # then the delivered mark stands for the lease: the entry is acknowledged now
    assert report.acknowledged == [entry_id]
    assert pending(client) == 0


def test_a_delivery_whose_mark_the_broker_refused_keeps_its_lease(
    settings: Settings, client: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # given a recorded result on a broker of its own, and a cloud whose Redis takes writes
    with LocalRedis() as server:
        local = redis.Redis(port=server.port)
        local.config_set("maxmemory-policy", "noeviction")
        cloud = CloudClient(settings, sleep=lambda _: None)
        deliverer = Deliverer(
            settings,
            RecordStore(local, QPU),
            CloudStatus(client, QPU),
            cloud=cloud,
            signer=Signer(generate_private_key_pem(), f"{QPU}-1", QPU),
            state=NodeState(local, QPU),
            entries=EntryIndex(local, QPU, broker_namespace(QPU)),
        )
        deliverer.records.record([("j-1", RESULT)])

        # when the broker reaches maxmemory while the cloud accepts the result (the delivered mark is refused)
        def accept(request: Any, context: Any) -> dict[str, bool]:
            local.config_set("maxmemory", "1")
            return {"ok": True}

        requests_mock.post(CALLBACK, status_code=200, json=accept)
        try:
            outcome = deliverer.deliver("j-1", CALLBACK, None)
            lease_left = local.pttl(delivery_lease_key(QPU, "j-1"))
            marked = local.hexists(job_key(QPU, "j-1"), "delivered")
        finally:
            local.config_set("maxmemory", "0")
            cloud.close()
            local.close()
    # then the job ends at the cloud, and the lease stays (to expire) since no mark stands for it
    assert outcome == "delivered"
    assert not marked
    assert lease_left > 0
