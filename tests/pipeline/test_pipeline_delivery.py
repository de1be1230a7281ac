"""Result delivery against a failing cloud: retries, 4xx, dead letters and replay."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from pipeline_support import circuit, deliveries, status

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e


def test_results_arrive_once_the_cloud_recovers_from_503(stack: LocalStack) -> None:
    # A count, not a time window: a window could close before a worker still booting made an attempt.
    stack.cloud.set_fault("webhook", 503, count=3)
    try:
        ids = [stack.cloud.submit(stack.qpu_id, circuit(), 10) for _ in range(5)]
        results = stack.cloud.wait_for_results(ids, timeout_sec=30)
    finally:
        stack.cloud.clear_faults()
    assert {r["status"] for r in results.values()} == {"completed"}
    refused = [w for w in stack.cloud.webhooks(accepted=False) if w.get("job_id") in ids]
    assert refused, "the fault window should have refused some attempts"


def test_a_4xx_is_final_and_fails_the_job(stack: LocalStack) -> None:
    # the fault is in place before the job exists: a fast node could deliver before a later one
    job_id = f"refused-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 400, count=100, job_id=job_id)
    stack.cloud.submit(stack.qpu_id, circuit(), 10, job_id=job_id)
    try:
        wait_until(lambda: status(stack, job_id).get("state") == "failed", 20, "the failed status")
    finally:
        stack.cloud.clear_faults()
    assert "refused" in status(stack, job_id)["error"]
    assert len(stack.cloud.webhooks(job_id)) == 1


def test_a_result_out_of_retries_is_dead_lettered_and_replay_delivers_it(stack: LocalStack) -> None:
    job_id = f"dead-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 503, count=1000, job_id=job_id)  # before the job: see above
    stack.cloud.submit(stack.qpu_id, circuit(), 10, job_id=job_id)
    env = {**os.environ, **stack.env()}
    listing = [sys.executable, "-m", "coda_bridge", "replay", "--list"]
    try:
        wait_until(
            lambda: (
                job_id in subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout
            ),
            60,  # every retry's backoff, on a busy machine, and a `replay --list` per look
            "the result to reach the dead-letter queue",
        )
    finally:
        stack.cloud.clear_faults()
    assert stack.cloud.result(job_id) is None

    replay = subprocess.run(
        [sys.executable, "-m", "coda_bridge", "replay", job_id],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    assert "re-queued 1" in replay.stdout
    result = stack.cloud.wait_for_result(job_id, timeout_sec=20)
    assert result["status"] == "completed"
    assert job_id not in subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout
    wait_until(lambda: status(stack, job_id).get("state") == "completed", 10, "the completed status")
    assert len([d for d in deliveries(stack, job_id) if d.get("accepted")]) == 1


def test_each_webhook_retry_is_one_warning_line_without_a_traceback(stack: LocalStack) -> None:
    # given the cloud answers the first 3 deliveries of a job with 503
    log = stack.workdir / "results.log"
    seen = log.stat().st_size if log.exists() else 0
    job_id = f"retried-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 503, count=3, job_id=job_id)
    try:
        # when the job runs and its result is delivered
        stack.cloud.submit(stack.qpu_id, circuit(), 10, job_id=job_id)
        result = stack.cloud.wait_for_result(job_id, timeout_sec=30)
    finally:
        stack.cloud.clear_faults()
    assert result["status"] == "completed"

    # then the results worker logged no ERROR line nor traceback
    with log.open("rb") as handle:
        handle.seek(seen)
        lines = handle.read().decode(errors="replace").splitlines()
    assert [line for line in lines if " ERROR " in line or "Traceback" in line] == [], "\n".join(lines)
    # and one WARNING line per failed attempt, each saying it retries
    warnings = [line for line in lines if f"Delivery of job {job_id} failed" in line]
    assert len(warnings) == 3, "\n".join(lines)
    assert all(" WARNING " in line and "retrying with backoff" in line for line in warnings), warnings
