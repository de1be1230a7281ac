"""Handing a job's results to the webhook actor: at once, or inline first while the worker drains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coda_bridge.pipeline.execute import Delivery
from coda_bridge.pipeline.handoff import Handoff

DELIVERIES = [("job-1", "https://cloud.example/cb", "1-0"), ("job-2", "https://cloud.example/cb", "2-0")]


class Recorder:
    def __init__(self, failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.failing = failing
        self.delivered: list[str] = []
        self.queued: list[Delivery] = []
        self.recorded: list[tuple[str, Mapping[str, Any]]] = []

    def deliver(self, job_id: str, callback_url: str, entry_id: str) -> None:
        if job_id in self.failing:
            raise RuntimeError("the cloud does not answer")
        self.delivered.append(job_id)

    def handoff(self, draining: bool) -> Handoff:
        return Handoff(self.deliver, self.recorded.extend, self.queued.extend, lambda: draining)


def test_results_are_queued_and_not_delivered_inline_while_running() -> None:
    recorder = Recorder()
    recorder.handoff(draining=False).queue(DELIVERIES)
    assert recorder.queued == DELIVERIES and recorder.delivered == []


def test_while_draining_each_is_tried_inline_and_only_a_failed_one_is_queued() -> None:
    recorder = Recorder(failing={"job-2"})
    recorder.handoff(draining=True).queue(DELIVERIES)
    assert recorder.delivered == ["job-1"]
    assert recorder.queued == [DELIVERIES[1]]


def test_a_backstopped_job_is_recorded_failed_naming_the_limit_then_queued() -> None:
    recorder = Recorder()
    fields = {"job_id": "job-1", "callback_url": "https://cloud.example/cb"}
    recorder.handoff(draining=False).backstop_failure(fields, "1-0", 120_000, 30)
    [(job_id, payload)] = recorder.recorded
    assert job_id == "job-1" and payload["status"] == "failed"
    assert "backstop time limit of 120 s (job_time_limit_sec = 30 s)" in payload["error"]
    assert recorder.queued == [DELIVERIES[0]]


def test_a_backstopped_entry_without_a_callback_records_nothing() -> None:
    recorder = Recorder()
    recorder.handoff(draining=False).backstop_failure({"job_id": "job-1"}, "1-0", 120_000, 30)
    assert recorder.recorded == [] and recorder.queued == []
