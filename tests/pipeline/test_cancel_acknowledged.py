"""A cancelled job is acknowledged where it is cancelled, on a real Redis: nothing stays pending.

The bridge reads each entry into the jobs queue, a dramatiq consumer takes
the message as the jobs worker would, and ``execute_job`` runs it.  Once the
job is cancelled (before its run, or during it), its entry must not be
pending in the cloud's consumer group, so the next reconcile pass has
nothing to forward and the jobs queue (the device's one slot) never sees
the entry a second time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis
from dramatiq.broker import Consumer, MessageProxy
from pipeline_support import circuit

from coda_bridge.cloud.redis_keys import cancel_key, status_key
from coda_bridge.components import NodeComponents
from coda_bridge.devtools.stack import wait_until
from coda_bridge.pipeline.execute import Delivery, execute_job
from coda_bridge.pipeline.intake import StreamBridge
from coda_bridge.queueing.queues import JOBS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.node_state import NodeState

QPU = "qpu-cancel-ack-test"
STREAM, GROUP = f"qpu:{QPU}:jobs", f"qpu:{QPU}:workers"
CALLBACK = "https://coda.conductorquantum.com/api/internal/qpu/webhook"
#: Longest wait for one step of a job on a busy machine.
STEP_TIMEOUT_SEC = 30.0


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Settings:
    clean_env.setenv("PIPELINE_TEST_EXECUTOR_LOG", str(tmp_path / "executor.log"))
    return load_settings(
        overrides={
            "qpu_id": QPU,
            "redis_url": redis_url,
            "broker_url": redis_url,
            "consumer_name": "bridge-a",
            "stream_block_ms": 50,
            "claim_idle_sec": 60,
            "executor_factory": "coda_test_executor:create_executor",
            "cancel_poll_interval_sec": 0.05,
        }
    )


@pytest.fixture
def broker(settings: Settings) -> Iterator[CodaBroker]:
    made = create_broker(settings)
    yield made
    made.close()


@pytest.fixture
def parts(settings: Settings) -> Iterator[NodeComponents]:
    made = NodeComponents(settings)
    yield made
    made.close()


@pytest.fixture
def bridge(settings: Settings, broker: CodaBroker) -> StreamBridge:
    made = StreamBridge(settings, broker, NodeState(broker.client, QPU))
    made.ensure_group()
    return made


@pytest.fixture
def cloud(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def _submit(cloud: redis.Redis, job_id: str, mode: str) -> str:
    fields = {"job_id": job_id, "callback_url": CALLBACK, "ir_json": json.dumps(circuit(mode)), "shots": "10"}
    return str(cloud.xadd(STREAM, fields))


def _forward(bridge: StreamBridge) -> None:
    """The bridge's cycles until it has read and forwarded the entry waiting in the stream."""
    wait_until(lambda: bridge.cycle() > 0, STEP_TIMEOUT_SEC, "the bridge to forward the entry")


def _take(broker: CodaBroker) -> tuple[MessageProxy, Consumer]:
    """The next message of the jobs queue, taken as the jobs worker takes it (dramatiq's consumer)."""
    consumer = broker.consume(JOBS_QUEUE, prefetch=1, timeout=100)
    message = wait_until(lambda: next(consumer), STEP_TIMEOUT_SEC, "a message on the jobs queue")
    return message, consumer


def _jobs_queued(broker: CodaBroker) -> int:
    return int(broker.client.llen(f"{broker.namespace}:{JOBS_QUEUE}"))


class _Calls:
    def __init__(self) -> None:
        self.enqueued: list[Delivery] = []
        self.later: list[str] = []

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        self.enqueued += deliveries

    def look_later(self, fields: Mapping[str, str], entry_id: str, delay_sec: float) -> None:
        self.later.append(entry_id)


def test_a_job_cancelled_before_its_run_leaves_nothing_pending_and_is_not_forwarded_again(
    bridge: StreamBridge, broker: CodaBroker, parts: NodeComponents, cloud: redis.Redis
) -> None:
    # given: an entry the bridge forwarded, then cancelled at the cloud before a worker took it
    entry_id = _submit(cloud, "cancel-early", "ok")
    _forward(bridge)
    cloud.set(cancel_key("cancel-early"), "1")
    message, consumer = _take(broker)
    calls = _Calls()

    # when: the jobs worker runs its message
    outcome = execute_job(parts.execution, *message.args, calls.enqueue, calls.look_later)
    consumer.ack(message)
    consumer.close()

    # then: the job is cancelled, its entry acknowledged, and a reconcile pass forwards nothing
    assert (outcome.outcome, outcome.detail) == ("cancelled", "before start")
    assert cloud.hget(status_key("cancel-early"), "state") == "cancelled"
    assert cloud.xpending(STREAM, GROUP)["pending"] == 0
    report = bridge.reconciler.run_once()
    assert (report.pending, report.forwarded) == (0, [])
    assert _jobs_queued(broker) == 0
    assert calls.enqueued == [] and calls.later == []
    assert entry_id == message.args[1]


def test_a_job_cancelled_during_its_run_leaves_nothing_pending_and_is_not_forwarded_again(
    bridge: StreamBridge, broker: CodaBroker, parts: NodeComponents, cloud: redis.Redis
) -> None:
    # given: a job that runs until cancelled, taken by the jobs worker and executing
    _submit(cloud, "cancel-late", "hang")
    _forward(bridge)
    message, consumer = _take(broker)
    calls = _Calls()
    outcomes: list[object] = []
    worker = threading.Thread(
        target=lambda: outcomes.append(
            execute_job(parts.execution, *message.args, calls.enqueue, calls.look_later)
        ),
        daemon=True,
    )
    worker.start()
    try:
        wait_until(
            lambda: cloud.hget(status_key("cancel-late"), "state") == "executing",
            STEP_TIMEOUT_SEC,
            "the job to run",
        )

        # when: the cloud cancels it mid-run
        cloud.set(cancel_key("cancel-late"), "1")
        wait_until(lambda: outcomes, STEP_TIMEOUT_SEC, "the run to end")
    finally:
        cloud.set(cancel_key("cancel-late"), "1")  # a failed wait still ends the run
        worker.join(STEP_TIMEOUT_SEC)
    consumer.ack(message)
    consumer.close()

    # then: the job is cancelled, its entry acknowledged, and a reconcile pass forwards nothing
    [outcome] = outcomes
    assert (outcome.outcome, outcome.detail) == ("cancelled", "during run")  # type: ignore[attr-defined]
    assert cloud.hget(status_key("cancel-late"), "state") == "cancelled"
    assert cloud.xpending(STREAM, GROUP)["pending"] == 0
    report = bridge.reconciler.run_once()
    assert (report.pending, report.forwarded) == (0, [])
    assert _jobs_queued(broker) == 0
    assert calls.enqueued == [] and calls.later == []
