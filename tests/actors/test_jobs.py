"""The job actors on StubBroker: results go to the webhook actor; the backstop ends in a failed result."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import actors.jobs
from actors.actor_options import backstop_limit_ms
from actors.jobs import execute
from coda_bridge.queueing.queues import JOBS_QUEUE, RESULTS_QUEUE
from coda_bridge.settings import Settings

from .conftest import Calls

#: Longest a fake job runs before the test gives up on dramatiq's time limit.
RUN_DEADLINE_SEC = 20.0
FIELDS = {"job_id": "job-1", "callback_url": "https://cloud.example/cb"}


def test_a_job_s_result_is_queued_for_the_webhook_actor(
    stub_broker: StubBroker, stub_worker: dramatiq.Worker, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an executor step that ends the job with a result to deliver
    def execute_job(
        execution: Any, fields: Mapping[str, str], entry_id: str, queue: Any, later: Any, **ahead: Any
    ) -> None:
        queue([(fields["job_id"], fields["callback_url"], entry_id)])

    monkeypatch.setattr(actors.jobs, "execute_job", execute_job)

    # when the job actor takes a stream entry
    execute.send(FIELDS, "1-0")
    stub_broker.join(JOBS_QUEUE, timeout=30_000)
    stub_broker.join(RESULTS_QUEUE, timeout=30_000)
    stub_worker.join()

    # then the webhook actor delivered its result
    assert calls.deliveries == [("job-1", "https://cloud.example/cb", "1-0", 1)]


def test_a_job_past_the_backstop_ends_as_a_failed_result_naming_the_limit(
    stub_broker: StubBroker,
    stub_worker: dramatiq.Worker,
    calls: Calls,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a job that runs on past the actor's time limit (made short for the test)
    def execute_job(*args: Any, **ahead: Any) -> None:
        deadline = time.monotonic() + RUN_DEADLINE_SEC
        while time.monotonic() < deadline:
            threading.Event().wait(0.01)  # a running circuit; dramatiq's time limit interrupts it

    monkeypatch.setattr(actors.jobs, "execute_job", execute_job)
    monkeypatch.setitem(execute.options, "time_limit", 100)

    # when the job actor takes it
    started = time.monotonic()
    execute.send(FIELDS, "1-0")
    stub_broker.join(JOBS_QUEUE, timeout=30_000)
    stub_broker.join(RESULTS_QUEUE, timeout=30_000)
    stub_worker.join()

    # then it was stopped, recorded as failed (naming the settings' backstop), and its result delivered
    assert time.monotonic() - started < RUN_DEADLINE_SEC
    assert [job_id for job_id, _ in calls.recorded] == ["job-1"]
    payload = calls.recorded[0][1]
    assert payload["status"] == "failed"
    assert f"backstop time limit of {backstop_limit_ms(settings) // 1000} s" in payload["error"]
    assert calls.deliveries == [("job-1", "https://cloud.example/cb", "1-0", 1)]
