"""Crash safety with real processes: kill -9 at the steps where a crash matters, then restart.

Every job that reached the stream must end with exactly one terminal
result at the cloud, and never two different results for one job.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pipeline_support import (
    FAST_LIMITS,
    PRODUCTION_RESULT_PROCESSES,
    circuit,
    deliveries,
    executor_runs,
    restart_worker_with_failpoint,
    stack_env,
    status,
)

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.pipeline.delivery import LEASE_MARGIN_SEC

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

#: The webhook timeout of the delivery-kill test: its delivery lease (this plus a margin) is waited out.
WEBHOOK_TIMEOUT_SEC = 5
#: Room for a busy machine on top of a wait the settings determine.
MARGIN_SEC = 30


def _one_result_each(stack: LocalStack, ids: list[str]) -> None:
    results = stack.cloud.wait_for_results(ids, timeout_sec=60)
    assert len(results) == len(ids)
    for job_id in ids:
        sent = deliveries(stack, job_id)
        accepted = [d for d in sent if d.get("accepted", True)]
        assert accepted, job_id
        first = accepted[0]["body"]
        assert all(d["body"] == first for d in accepted), f"two different results for {job_id}"
    assert stack.cloud.stats(stack.qpu_id)["content_mismatches"] == 0


def test_bridge_killed_between_read_and_ack(fresh_stack: LocalStack) -> None:
    stack = fresh_stack
    stack.children["bridge"].stop()
    stack.start_process("bridge", env={"CODA_FAILPOINTS": "bridge.before_ack=exit@1"})
    tags = [f"bridge-{i}" for i in range(20)]
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok", tag=tag), 10) for tag in tags]

    wait_until(lambda: not stack.children["bridge"].alive(), 20, "the bridge to die at the failpoint")
    stack.start_process("bridge")

    _one_result_each(stack, ids)
    assert [executor_runs(stack, tag) for tag in tags] == [1] * len(tags)
    assert stack.cloud.stats(stack.qpu_id)["duplicate_deliveries"] == 0


def test_executor_worker_killed_mid_run_is_rerun_within_30_s_of_restart(fresh_stack: LocalStack) -> None:
    stack = fresh_stack
    job_id = stack.cloud.submit(stack.qpu_id, circuit("sleep:3", tag="killed"), 10)
    wait_until(lambda: executor_runs(stack, "killed") == 1, 20, "the executor to start the job")

    stack.kill9("jobs")
    stack.start_process("jobs")
    restarted = time.monotonic()

    result = stack.cloud.wait_for_result(job_id, timeout_sec=40)
    assert time.monotonic() - restarted < 30
    assert result["status"] == "completed"
    assert executor_runs(stack, "killed") == 2
    _one_result_each(stack, [job_id])
    wait_until(lambda: status(stack, job_id).get("state") == "completed", 10, "the completed status")


def test_webhook_worker_killed_mid_delivery(tmp_path: Path) -> None:
    env = stack_env(
        tmp_path,
        **FAST_LIMITS,
        CODA_WEBHOOK_TIMEOUT_SEC=str(WEBHOOK_TIMEOUT_SEC),
        CODA_RESULT_PROCESSES=PRODUCTION_RESULT_PROCESSES,  # the kill takes both of the shipped layout's
    )
    with LocalStack(tmp_path, env=env) as stack:
        restart_worker_with_failpoint(stack, "results", "delivery.after_post=exit@1")
        ids = [stack.cloud.submit(stack.qpu_id, circuit("ok", tag=f"hook-{i}"), 10) for i in range(5)]

        wait_until(
            lambda: not stack.children["results"].alive(), 20, "the results worker to die after a POST"
        )
        stack.start_process("results")

        _one_result_each(stack, ids)
        assert all(executor_runs(stack, f"hook-{i}") == 1 for i in range(5))
        # the killed worker's delivery lease (webhook timeout plus a margin) lapses before the status write
        lease_sec = WEBHOOK_TIMEOUT_SEC + LEASE_MARGIN_SEC
        wait_until(
            lambda: {status(stack, j).get("state") for j in ids} == {"completed"},
            lease_sec + MARGIN_SEC,
            "every status completed",
        )


def test_executor_worker_killed_after_recording_the_result(fresh_stack: LocalStack) -> None:
    stack = fresh_stack
    restart_worker_with_failpoint(stack, "jobs", "jobs.after_record=exit@1")
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok", tag="recorded"), 10)

    wait_until(lambda: not stack.children["jobs"].alive(), 20, "the executor worker to die after recording")
    stack.start_process("jobs")

    _one_result_each(stack, [job_id])
    assert executor_runs(stack, "recorded") == 1


def test_a_cloud_redis_outage_mid_run_loses_nothing(fresh_stack: LocalStack) -> None:
    stack = fresh_stack
    job_id = stack.cloud.submit(stack.qpu_id, circuit("sleep:4", tag="outage"), 10)
    wait_until(lambda: executor_runs(stack, "outage") == 1, 20, "the executor to start the job")

    stack.cloud_redis.stop()
    time.sleep(2)  # the length of the outage, not a wait for work
    stack.cloud_redis.start()

    result = stack.cloud.wait_for_result(job_id, timeout_sec=60)
    assert result["status"] == "completed"
    assert executor_runs(stack, "outage") == 1
    wait_until(lambda: status(stack, job_id).get("state") == "completed", 20, "the completed status")


def test_a_non_utf8_entry_fails_cleanly_and_the_bridge_goes_on(fresh_stack: LocalStack) -> None:
    stack = fresh_stack
    raw = stack.cloud_redis.client()
    fields = stack.cloud.job(stack.cloud.submit(stack.qpu_id, circuit(), 10))["fields"]
    bad_id = "bad-bytes"
    raw.xadd(f"qpu:{stack.qpu_id}:jobs", {**fields, "job_id": bad_id, "ir_json": b"\xff\xfe{not utf-8"})
    good = stack.cloud.submit(stack.qpu_id, circuit(), 10)

    stack.cloud.wait_for_results([good], timeout_sec=30)

    wait_until(lambda: status(stack, bad_id).get("state") == "failed", 20, "the bad entry to fail")
    assert stack.children["bridge"].alive()
