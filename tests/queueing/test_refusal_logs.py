"""A broker that refuses writes while deliveries run is one WARNING line per process, not a traceback per
attempt nor a CRITICAL per refused retry (issues 22 and 23).

A private redis-server (``CONFIG SET maxmemory 1`` under noeviction forces the refusal), the node's broker
and a dramatiq worker in this process, running the real delivery step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
import requests_mock as rm

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.devtools.stack import wait_until
from coda_bridge.pipeline.delivery import Deliverer, should_retry
from coda_bridge.pipeline.job_records import RecordStore
from coda_bridge.pipeline.status import CloudStatus
from coda_bridge.queueing.entry_index import EntryIndex
from coda_bridge.queueing.failure_logs import WORKER_LOGGER, ShortMessages
from coda_bridge.queueing.redis_broker import broker_namespace, create_broker
from coda_bridge.queueing.refusal import RefusalNotice
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState

QPU = "qpu-refusal-logs"
BASE = "https://cloud.test"
CALLBACK = f"{BASE}/api/internal/qpu/webhook"
#: Deliveries running when the broker starts refusing writes.
DELIVERIES = 4
#: How long the test waits for the in-process worker (dramatiq retries an acknowledgement every 5 s).
WORKER_WAIT_SEC = 30.0
RESULT = {"status": "completed", "counts": {"00": 1}}


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with LocalRedis() as server:
        handle = redis.Redis(port=server.port)
        handle.config_set("maxmemory-policy", "noeviction")
        yield handle
        handle.close()


@pytest.fixture
def quiet_worker_logger() -> Iterator[logging.Logger]:
    """dramatiq's worker logger without the filter an earlier worker of this process left on it."""
    worker_logger = logging.getLogger(WORKER_LOGGER)
    kept = list(worker_logger.filters)
    for f in kept:
        worker_logger.removeFilter(f)
    yield worker_logger
    for f in list(worker_logger.filters):
        worker_logger.removeFilter(f)
    for f in kept:
        worker_logger.addFilter(f)


@pytest.fixture
def deliveries(
    client: redis.Redis, quiet_worker_logger: logging.Logger
) -> Iterator[tuple[Any, Any, threading.Event]]:
    """The node's broker and a worker whose ``deliver`` runs the delivery step once ``release`` is set."""
    port = client.connection_pool.connection_kwargs["port"]
    url = f"redis://127.0.0.1:{port}/0"
    settings = Settings(qpu_id=QPU, broker_url=url, redis_url=url, webapp_url=BASE, webhook_timeout_sec=3)
    broker = create_broker(settings)
    cloud = CloudClient(settings, sleep=lambda _: None)
    deliverer = Deliverer(
        settings,
        RecordStore(client, QPU),
        CloudStatus(client, QPU),
        cloud=cloud,
        signer=Signer(generate_private_key_pem(), f"{QPU}-1", QPU),
        state=NodeState(client, QPU),
        entries=EntryIndex(client, QPU, broker_namespace(QPU)),
    )
    release = threading.Event()

    def deliver(job_id: str) -> None:
        release.wait(WORKER_WAIT_SEC)
        deliverer.deliver(job_id, CALLBACK, None)

    actor = dramatiq.actor(
        deliver,
        broker=broker,
        actor_name="deliver",
        queue_name="results",
        retry_when=should_retry(3),
        min_backoff=100,
    )
    worker = dramatiq.Worker(broker, queues=["results"], worker_threads=DELIVERIES, worker_timeout=50)
    worker.start()
    try:
        yield broker, actor, release
    finally:
        release.set()
        client.config_set("maxmemory", "0")
        worker.stop()
        cloud.close()
        broker.client.close()


@pytest.mark.e2e
def test_deliveries_refused_by_a_full_broker_log_one_warning_line_and_no_traceback(
    client: redis.Redis,
    deliveries: tuple[Any, Any, threading.Event],
    caplog: pytest.LogCaptureFixture,
    requests_mock: rm.Mocker,
) -> None:
    broker, actor, release = deliveries
    caplog.set_level(logging.DEBUG)
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})  # a retry may get through afterwards
    # given deliveries of recorded results, taken by the worker's threads
    RecordStore(client, QPU).record([(f"j-{n}", RESULT) for n in range(DELIVERIES)])
    for n in range(DELIVERIES):
        actor.send(f"j-{n}")
    wait_until(lambda: client.llen(f"{broker.namespace}:results") == 0, WORKER_WAIT_SEC, "every one fetched")
    # when the broker reaches maxmemory under noeviction as they take their leases
    client.config_set("maxmemory", "1")
    release.set()
    messages = f"{broker.namespace}:results.msgs"
    wait_until(
        lambda: sum("refuses writes" in r.getMessage() or r.levelno >= logging.ERROR for r in caplog.records),
        WORKER_WAIT_SEC,
        "the refusal to be logged",
    )
    wait_until(
        lambda: sum("Retrying message" in r.getMessage() for r in caplog.records) >= DELIVERIES,
        WORKER_WAIT_SEC,
        "every delivery to try its retry",
    )
    # and memory returns
    client.config_set("maxmemory", "0")
    wait_until(lambda: client.hlen(messages) == 0, WORKER_WAIT_SEC, "every message acknowledged")
    # then the outage is one WARNING line naming OOM and what to do, with no traceback and nothing above it
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in loud] == ["WARNING"], [r.getMessage() for r in loud]
    assert "the local broker refuses writes: OOM" in loud[0].getMessage()
    assert "free memory or raise maxmemory" in loud[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


def test_a_refusal_is_news_once_per_outage() -> None:
    now = [0.0]
    notice = RefusalNotice(quiet_sec=60, clock=lambda: now[0])
    # given refusals every 10 s for a minute and a half: one outage
    seen = []
    for _ in range(10):
        seen.append(notice.news())
        now[0] += 10
    # when the next comes after more than the quiet time
    now[0] += 61
    # then only the first of each outage is news
    assert seen == [True] + [False] * 9
    assert notice.news() is True


def test_a_refused_delivery_attempt_is_one_line_without_its_traceback() -> None:
    # given dramatiq's failure record of a message whose write the broker refused, and a second one
    error = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    message = dramatiq.Message(
        queue_name="results", actor_name="deliver", args=("j-1",), kwargs={}, options={}
    )
    records = [
        logging.LogRecord(
            WORKER_LOGGER,
            logging.ERROR,
            __file__,
            1,
            "Failed to process message %s with unhandled exception.",
            (message,),
            (type(error), error, None),
        )
        for _ in range(2)
    ]
    short = ShortMessages()
    # when the filter sees them
    kept = [short.filter(record) for record in records]
    # then the first is one WARNING line naming the refusal and what to do; the second is not logged
    assert kept == [True, False]
    assert records[0].levelname == "WARNING" and records[0].exc_info is None
    assert "refuses writes: OOM" in records[0].getMessage() and "raise maxmemory" in records[0].getMessage()
