"""Executors with batch_run: waiting jobs run together, one result per job, one by one on failure."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import (
    FAST_LIMITS,
    PRODUCTION_RESULT_PROCESSES,
    circuit,
    deliveries,
    executor_cancels,
    executor_runs,
    restart_worker_with_failpoint,
    stack_env,
    status,
)

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

#: The time limit of one job (a batch gets one per job it holds): short, so an overrun ends quickly.
JOB_TIME_LIMIT_SEC = 3
#: A POST's timeout, so a killed results worker's delivery lease (one timeout per round of a batch's
#: POSTs, plus a margin) lapses in 15 s, not the shipped 65 s; the simulator answers in milliseconds.
WEBHOOK_TIMEOUT_SEC = 5


@contextlib.contextmanager
def _batching_stack(workdir: Path) -> Iterator[LocalStack]:
    env = stack_env(
        workdir,
        **{**FAST_LIMITS, "CODA_JOB_TIME_LIMIT_SEC": str(JOB_TIME_LIMIT_SEC)},
        CODA_EXECUTOR_FACTORY="coda_test_executor:create_batch_executor",
        CODA_WEBHOOK_TIMEOUT_SEC=str(WEBHOOK_TIMEOUT_SEC),
        CODA_RESULT_PROCESSES=PRODUCTION_RESULT_PROCESSES,  # a results worker is killed mid-batch
    )
    with LocalStack(workdir, env=env) as node:
        first = node.cloud.submit(
            node.qpu_id, circuit(), 10
        )  # resolves the executor, which reports batch_run
        node.cloud.wait_for_results([first], timeout_sec=60)  # (20 s were too short beside a busy suite)
        yield node


@pytest.fixture(scope="module")
def batch_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with _batching_stack(tmp_path_factory.mktemp("batch")) as node:
        yield node


def _batches(workdir: Path) -> list[int]:
    lines = (workdir / "executor.log").read_text().splitlines()
    return [int(line.split()[1]) for line in lines if line.startswith("batch ")]


def _submit_while_bridge_is_down(stack: LocalStack, tags: list[str]) -> list[str]:
    """Submit a job per tag (``mode:tag``, or an ``ok`` job) while the bridge is down, then start it."""
    stack.children["bridge"].stop()
    jobs = [_mode_tag(tag) for tag in tags]
    ids = [stack.cloud.submit(stack.qpu_id, circuit(mode, tag=tag), 10) for mode, tag in jobs]
    stack.start_process("bridge")
    return ids


def _mode_tag(tag: str) -> tuple[str, str]:
    mode, _, rest = tag.partition(":")
    return (mode, rest) if rest else ("ok", tag)


def test_waiting_jobs_run_in_batches_of_batch_size(batch_stack: LocalStack) -> None:
    before = len(_batches(batch_stack.workdir))
    tags = [f"b{i}" for i in range(25)]

    ids = _submit_while_bridge_is_down(batch_stack, tags)
    results = batch_stack.cloud.wait_for_results(ids, timeout_sec=30)

    assert {r["status"] for r in results.values()} == {"completed"}
    # (the batch messages may run in another order than they were sent: a message the worker had
    # prefetched goes back to the queue when a busy machine stalls its heartbeat)
    assert sorted(_batches(batch_stack.workdir)[before:], reverse=True) == [10, 10, 5]
    assert [executor_runs(batch_stack, tag) for tag in tags] == [1] * 25


def test_a_failing_batch_call_falls_back_to_one_by_one(batch_stack: LocalStack) -> None:
    tags = [f"f{i}" for i in range(4)]
    stack = batch_stack
    stack.children["bridge"].stop()
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok", tag=tag), 10) for tag in tags]
    ids.append(stack.cloud.submit(stack.qpu_id, circuit("batchfail", tag="bad-batch"), 10))
    stack.start_process("bridge")

    results = stack.cloud.wait_for_results(ids, timeout_sec=30)

    assert {r["status"] for r in results.values()} == {"completed"}
    assert [executor_runs(stack, tag) for tag in tags] == [1] * 4
    assert "running them one by one" in stack.log_tail("jobs", 100)


@pytest.mark.fault
def test_a_batch_recorded_before_a_kill_is_delivered_once_and_never_run_again(
    batch_stack: LocalStack,
) -> None:
    stack = batch_stack  # (the worker it kills is started again, as it was, by the end)
    restart_worker_with_failpoint(stack, "jobs", "jobs.after_record=exit@1")
    tags = [f"rec{i}" for i in range(5)]

    ids = _submit_while_bridge_is_down(stack, tags)
    wait_until(lambda: not stack.children["jobs"].alive(), 20, "the worker to die after recording")
    stack.start_process("jobs")
    results = stack.cloud.wait_for_results(ids, timeout_sec=60)

    assert {r["status"] for r in results.values()} == {"completed"}
    assert _batches(stack.workdir)[-1:] == [5]
    assert [executor_runs(stack, tag) for tag in tags] == [1] * 5
    assert [len(deliveries(stack, job_id)) for job_id in ids] == [1] * 5


def test_a_batch_s_results_met_by_503s_each_arrive_once_after_them(batch_stack: LocalStack) -> None:
    # given a cloud whose next four webhooks answer 503 (some results of the batches fail their first POST)
    stack = batch_stack
    stack.cloud.set_fault("webhook", 503, count=4)
    tags = [f"hook503-{i}" for i in range(12)]

    # when two batches of jobs run
    ids = _submit_while_bridge_is_down(stack, tags)
    results = stack.cloud.wait_for_results(ids, timeout_sec=60)

    # then every job completed with one accepted result, after 503s were answered to some, none run twice
    assert {r["status"] for r in results.values()} == {"completed"}
    accepted = [[d for d in deliveries(stack, job_id) if d.get("accepted", True)] for job_id in ids]
    assert [len(each) for each in accepted] == [1] * len(ids)
    refused = sum(len(deliveries(stack, job_id)) for job_id in ids) - len(ids)
    assert refused == 4
    assert [executor_runs(stack, tag) for tag in tags] == [1] * len(tags)
    wait_until(lambda: {status(stack, j).get("state") for j in ids} == {"completed"}, 30, "every status")


@pytest.mark.fault
def test_a_results_worker_killed_inside_a_batch_s_posts_loses_no_result(batch_stack: LocalStack) -> None:
    # given a results worker that dies right after the first POST it makes
    stack = batch_stack  # (the worker it kills is started again, as it was, by the end)
    restart_worker_with_failpoint(stack, "results", "delivery.after_post=exit@1")
    tags = [f"hookkill-{i}" for i in range(10)]

    # when a batch's results are delivered, and the worker is started again after it died
    ids = _submit_while_bridge_is_down(stack, tags)
    wait_until(lambda: not stack.children["results"].alive(), 30, "the results worker to die after a POST")
    stack.start_process("results")

    # then every job has one result (the killed POST's result, the same one, may arrive twice), each ran once
    results = stack.cloud.wait_for_results(ids, timeout_sec=90)
    assert {r["status"] for r in results.values()} == {"completed"}
    for job_id in ids:
        accepted = [d["body"] for d in deliveries(stack, job_id) if d.get("accepted", True)]
        assert accepted and all(body == accepted[0] for body in accepted), job_id
    assert stack.cloud.stats(stack.qpu_id)["content_mismatches"] == 0
    assert [executor_runs(stack, tag) for tag in tags] == [1] * len(tags)
    wait_until(lambda: {status(stack, j).get("state") for j in ids} == {"completed"}, 60, "every status")


def test_a_cancel_inside_a_running_batch_ends_that_job_cancelled_at_once_and_the_others_complete(
    batch_stack: LocalStack,
) -> None:
    # Given a batch whose first job runs for 20 s, followed by three quick ones
    stack = batch_stack
    cancels_before = executor_cancels(stack)
    before = len(_batches(stack.workdir))
    stack.children["bridge"].stop()
    long = stack.cloud.submit(stack.qpu_id, circuit("sleep:20", tag="batch-long"), 10)
    others = [stack.cloud.submit(stack.qpu_id, circuit("ok", tag=f"batch-other-{i}"), 10) for i in range(3)]
    stack.start_process("bridge")
    wait_until(lambda: executor_runs(stack, "batch-long") == 1, 20, "the batch to start")
    assert _batches(stack.workdir)[before:] == [4]

    # When the cloud cancels the long job mid-batch (its cancel key is set once the call returns)
    stack.cloud.cancel(long)
    cancelled_at = time.monotonic()

    # Then cancel_current_job() is called within the poll interval plus a short grace
    wait_until(lambda: executor_cancels(stack) == cancels_before + 1, 3, "cancel_current_job()")
    assert time.monotonic() - cancelled_at < 3
    # and the job ends cancelled (no result sent), the others with their own results
    results = stack.cloud.wait_for_results(others, timeout_sec=30)
    assert [results[job_id]["status"] for job_id in others] == ["completed"] * 3
    wait_until(lambda: status(stack, long).get("state") == "cancelled", 10, "the cancelled status")
    assert deliveries(stack, long) == []
    assert [len(deliveries(stack, job_id)) for job_id in others] == [1] * 3


def test_a_batch_past_its_time_limit_fails_only_the_job_that_overran_naming_the_setting(
    batch_stack: LocalStack,
) -> None:
    # Given a batch of a job that never ends (until cancelled) and two quick ones; the limit is 3 s a job
    before = len(_batches(batch_stack.workdir))
    ids = _submit_while_bridge_is_down(batch_stack, ["hang:over-hang", "over-ok-0", "over-ok-1"])

    # When the batch passes 9 s (3 jobs of 3 s), and each job then runs on its own
    results = batch_stack.cloud.wait_for_results(ids, timeout_sec=60)

    # Then the hanging job fails naming the setting's real value; the others complete
    hang, *quick = ids
    assert results[hang]["status"] == "failed"
    limit = f"time limit of {JOB_TIME_LIMIT_SEC} s (job_time_limit_sec)"
    assert limit in results[hang]["error"], results[hang]["error"]
    assert [results[job_id]["status"] for job_id in quick] == ["completed"] * 2
    assert [len(deliveries(batch_stack, job_id)) for job_id in ids] == [1] * 3
    assert _batches(batch_stack.workdir)[before:] == [3]
