"""A job's timeline on a real node: every step writes its events, and ``coda-bridge job`` shows them.

Real Redis, the simulator, the bridge and the dramatiq workers run as
processes; the cloud refuses webhooks through its fault windows and the
test executor crashes its own process.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pipeline_support import circuit, deliveries, executor_runs

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.state.broker_keys import timeline_key

pytestmark = pytest.mark.e2e

#: A job and all its deliveries end within this on a busy machine (backoff is at most 0.5 s here).
JOB_SEC = 60


def timeline(stack: LocalStack, job_id: str) -> dict[str, Any]:
    """``coda-bridge job JOB_ID --json``, parsed (the command must succeed)."""
    done = stack.command("job", job_id, "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def kinds(stack: LocalStack, job_id: str) -> list[str]:
    raw: Any = stack.broker_redis.client().lrange(timeline_key(stack.qpu_id, job_id), 0, -1)
    return [json.loads(item)["event"] for item in raw]


def acknowledged(stack: LocalStack, job_id: str) -> None:
    """Wait for the timeline's last step: the outcome at the cloud (written just after the result)."""
    wait_until(lambda: "acknowledged" in kinds(stack, job_id), 20, f"job {job_id} acknowledged")


def test_a_webhook_answered_503_twice_then_accepted_shows_all_three_attempts_and_their_answers(
    stack: LocalStack,
) -> None:
    # Given the cloud answers the first two deliveries of a job with 503 (in place before the job exists)
    job_id = f"tl-retried-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 503, count=2, job_id=job_id)
    try:
        # When the job runs and its result is delivered on the third attempt
        stack.cloud.submit(stack.qpu_id, circuit("ok"), 10, job_id=job_id)
        assert stack.cloud.wait_for_result(job_id, timeout_sec=JOB_SEC)["status"] == "completed"
    finally:
        stack.cloud.clear_faults()
    acknowledged(stack, job_id)

    # Then `coda-bridge job --json` shows every step in order, from the processes that did it
    document = timeline(stack, job_id)
    assert document["job_id"] == job_id and document["qpu_id"] == stack.qpu_id
    events = document["events"]
    steps = [event["event"] for event in events]
    for earlier, later in zip(
        ["received", "queued", "started", "finished", "recorded", "delivery"],
        ["queued", "started", "finished", "recorded", "delivery", "acknowledged"],
        strict=True,
    ):
        assert steps.index(earlier) < steps.index(later), steps
    assert all(isinstance(event["pid"], int) and event["host"] for event in events)
    # and the three delivery attempts with the cloud's answers: 503, 503, then accepted
    attempts = [event for event in events if event["event"] == "delivery"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in attempts] == [
        (1, "retry", 503),
        (2, "retry", 503),
        (3, "accepted", 200),
    ], attempts
    assert all("503" in a["reason"] for a in attempts[:2]), attempts
    assert [e["outcome"] for e in events if e["event"] == "recorded"] == ["completed"]
    # and it is kept for record_retention_sec (7 days by default), no longer
    assert 0 < document["expires_in_sec"] <= 7 * 86_400

    # and the plain form says the same in words, one line per event
    shown = stack.command("job", job_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"Job {job_id} on QPU {stack.qpu_id} ({len(events)} events")
    webhook = [line for line in lines if " delivery " in line]
    assert len(webhook) == 3 and "retry (HTTP 503" in webhook[0] and "accepted (HTTP 200" in webhook[2]

    # and nothing secret or bulky is kept: no JWT, no header, no counts
    for text in (shown.stdout, json.dumps(document)):
        assert "eyJ" not in text and "Bearer" not in text and "counts" not in text


def test_an_executor_run_that_crashed_then_ran_again_shows_both_runs(stack: LocalStack) -> None:
    # Given a job whose executor process dies on its first run and answers on the second
    tag = uuid.uuid4().hex[:8]
    job_id = stack.cloud.submit(stack.qpu_id, circuit("exitonce", tag=tag), 10)

    # When it runs
    assert stack.cloud.wait_for_result(job_id, timeout_sec=JOB_SEC)["status"] == "completed"
    assert executor_runs(stack, tag) == 2
    acknowledged(stack, job_id)

    # Then its timeline shows two runs: the first lost with how its process died, the second completed
    events = timeline(stack, job_id)["events"]
    runs = [e for e in events if e["event"] in ("started", "crashed", "finished")]
    assert [e["event"] for e in runs] == ["started", "crashed", "started", "finished"], runs
    assert "died with exit code 1" in runs[1]["reason"]
    assert runs[2]["rerun"] == "after a crash" and runs[3]["outcome"] == "completed"
    shown = stack.command("job", job_id).stdout
    assert "run 1 lost" in shown and "run 2 started" in shown and "run 2 ended completed" in shown
    assert len(deliveries(stack, job_id)) == 1


def test_a_timeline_the_broker_refuses_to_write_costs_the_job_nothing(stack: LocalStack) -> None:
    # Given the broker refuses every timeline write of a job (its key holds a value of another type)
    job_id = f"tl-refused-{uuid.uuid4().hex[:8]}"
    broker = stack.broker_redis.client()
    broker.set(timeline_key(stack.qpu_id, job_id), "not a list")
    logs = [stack.workdir / "jobs.log", stack.workdir / "results.log"]
    seen = [log.stat().st_size if log.exists() else 0 for log in logs]
    stack.cloud.set_fault("webhook", 503, count=1, job_id=job_id)
    try:
        # When the job runs, and its first delivery is answered 503
        stack.cloud.submit(stack.qpu_id, circuit("ok"), 10, job_id=job_id)
        result = stack.cloud.wait_for_result(job_id, timeout_sec=JOB_SEC)
    finally:
        stack.cloud.clear_faults()

    # Then the job completes with one accepted delivery, as if nothing had happened
    assert result["status"] == "completed"
    accepted = lambda: [d for d in deliveries(stack, job_id) if d.get("accepted")]  # noqa: E731
    wait_until(lambda: len(accepted()) == 1, 20, "the accepted delivery")
    # and the jobs and results workers each said so in a WARNING line, without a traceback
    for log, start in zip(logs, seen, strict=True):
        with log.open("rb") as handle:
            handle.seek(start)
            lines = handle.read().decode(errors="replace").splitlines()
        warned = [line for line in lines if "Job timeline events not written" in line]
        assert warned and all(" WARNING " in line for line in warned), (log.name, lines)
        assert not [line for line in lines if "Traceback" in line or " ERROR " in line], (log.name, lines)
    # and nothing was written over the key that was there
    assert broker.get(timeline_key(stack.qpu_id, job_id)) == "not a list"


def test_an_unknown_job_is_one_line_and_exit_1(stack: LocalStack) -> None:
    # When an operator asks for a job this node never saw
    done = stack.command("job", f"never-{uuid.uuid4().hex[:8]}")

    # Then it says so in one line, exit code 1
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "no timeline for job never-" in done.stderr


def test_a_dead_lettered_then_replayed_result_shows_both_and_the_delivery_after(stack: LocalStack) -> None:
    # Given the cloud answers every delivery of a job with 503 until its result is dead-lettered
    job_id = f"tl-dead-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 503, count=1000, job_id=job_id)
    try:
        stack.cloud.submit(stack.qpu_id, circuit("ok"), 10, job_id=job_id)
        wait_until(lambda: "dead_lettered" in kinds(stack, job_id), JOB_SEC, "the result dead-lettered")
    finally:
        stack.cloud.clear_faults()

    # When the operator replays it
    replay = stack.command("replay", job_id)
    assert replay.returncode == 0, replay.stderr
    assert stack.cloud.wait_for_result(job_id, timeout_sec=JOB_SEC)["status"] == "completed"
    acknowledged(stack, job_id)

    # Then the timeline shows every refused attempt, the dead letter, the replay, and the accepted one
    events = timeline(stack, job_id)["events"]
    steps = [e["event"] for e in events if e["event"] in ("delivery", "dead_lettered", "replayed")]
    assert steps == ["delivery"] * 4 + ["dead_lettered", "replayed", "delivery"], steps  # 1 + 3 retries
    dead = next(e for e in events if e["event"] == "dead_lettered")
    assert dead["attempts"] == 4
    assert events[-2]["event"] == "delivery" and events[-2]["outcome"] == "accepted"


def test_a_job_cancelled_during_its_run_shows_the_cancel_and_no_delivery(stack: LocalStack) -> None:
    # Given a job whose run never ends by itself
    job_id = stack.cloud.submit(stack.qpu_id, circuit("hang"), 10)
    wait_until(lambda: "started" in kinds(stack, job_id), JOB_SEC, "the run to start")

    # When the cloud cancels it
    stack.cloud.cancel(job_id)
    acknowledged(stack, job_id)

    # Then the timeline shows the cancel during the run, the run ended cancelled, and no result or delivery
    events = timeline(stack, job_id)["events"]
    steps = [e["event"] for e in events]
    assert steps[steps.index("started") :] == ["started", "cancel_asked", "finished", "acknowledged"], steps
    assert events[-3]["during"] == "the run"
    assert events[-2]["outcome"] == events[-1]["outcome"] == "cancelled"
