"""The actors on dramatiq's StubBroker, as dramatiq tests its own: a StubBroker, a Worker, ``broker.join``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Retries, TimeLimit

import actors
from actors.actor_options import actor_options
from coda_bridge.pipeline.delivery import Again, DeliveryRetry
from coda_bridge.queueing.middleware import StaleTicks
from coda_bridge.settings import Settings


@dataclass
class Calls:
    """What the actors asked of the node's parts, in order."""

    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    recorded: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    dead_lettered: list[tuple[str | None, int]] = field(default_factory=list)
    #: When each dead letter's retries ran out, as the actor passed it on.
    dead_lettered_at: list[float | None] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    batches: list[tuple[list[tuple[Any, ...]], int]] = field(default_factory=list)
    #: Jobs whose attempt in a batch needs another (the cloud answered 5xx).
    retried_in_batch: set[str] = field(default_factory=set)


class FakeParts:
    """The parts an actor uses, recording each call (``deliver`` fails with ``failures`` first, in order)."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.deliverer = self
        self.records = self
        self.state = self
        self.histograms = self
        self.timeline = self
        self.execution = object()
        self.can_sign = False

    def deliver(self, *args: Any) -> str:
        self.calls.deliveries.append(args)
        if self.calls.failures:
            raise self.calls.failures.pop(0)
        return "delivered"

    def deliver_many(self, items: list[tuple[Any, ...]], attempt: int = 1) -> tuple[list[str], list[Again]]:
        self.calls.batches.append((list(items), attempt))
        again = [
            Again(item, attempt + 1, None, DeliveryRetry("503 from the cloud"))  # type: ignore[arg-type]
            for item in items
            if item[0] in self.calls.retried_in_batch
        ]
        return ["retry" if item[0] in self.calls.retried_in_batch else "delivered" for item in items], again

    def record(self, results: list[tuple[str, dict[str, Any]]]) -> list[str]:
        self.calls.recorded.extend(results)
        return [job_id for job_id, _ in results]

    def dead_lettered(self, job_id: str | None, attempts: int, at: float | None = None) -> None:
        self.calls.dead_lettered.append((job_id, attempts))
        self.calls.dead_lettered_at.append(at)


@pytest.fixture
def settings() -> Settings:
    return Settings(qpu_id="qpu-stub", webhook_max_retries=2, webhook_max_backoff_sec=0.05)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def stub_broker(settings: Settings, calls: Calls) -> Iterator[StubBroker]:
    """Every actor of the package, declared again on a StubBroker, with the options ``settings`` decide."""
    broker = StubBroker(
        middleware=[TimeLimit(interval=10), Retries(max_retries=0), CurrentMessage(), StaleTicks()]
    )
    broker.emit_after("process_boot")
    declared = dict(actors.broker.actors)
    saved_options = {name: dict(actor.options) for name, actor in declared.items()}
    node = actors.node
    node.use(settings, FakeParts(calls))  # type: ignore[arg-type]
    for name, actor in declared.items():
        actor.broker = broker
        broker.declare_actor(actor)
        actor.options.update(actor_options(settings).get(name, {}))
    dramatiq.set_broker(broker)
    try:
        yield broker
    finally:
        broker.close()
        for name, actor in declared.items():
            actor.broker = actors.broker
            actor.options.clear()
            actor.options.update(saved_options[name])
        node.__init__()  # type: ignore[misc]  # unbooted again
        dramatiq.set_broker(actors.broker)


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
