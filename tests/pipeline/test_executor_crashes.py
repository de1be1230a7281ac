"""An executor that crashes or cannot be stopped, on a real node: one clear result, and the next job runs.

The executor runs in child processes of the jobs worker, so the same holds
in the three ways a node runs: the Procfile's lines, ``coda-bridge start``
and ``start --one-process``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import FAST_LIMITS, circuit, deliveries, executor_runs, stack_env, status

from coda_bridge.devtools.stack import MODES, LocalStack, wait_until
from coda_bridge.state.node_state import NodeState

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

#: A normal job right after a crash completes within this (it takes about 0.1 s on an idle node).
NORMAL_JOB_SEC = 5.0


def _nothing_pending(stack: LocalStack) -> bool:
    reply: Any = stack.cloud_redis.client().xpending(
        f"qpu:{stack.qpu_id}:jobs", f"qpu:{stack.qpu_id}:workers"
    )
    return int(reply["pending"]) == 0


def _jobs_process(stack: LocalStack) -> int | None:
    """The pid of the process that holds the jobs worker (in one-process mode: the node)."""
    if stack.mode == "start":
        return stack.part_pid("jobs")
    return stack.children["node" if stack.mode == "one-process" else "jobs"].pid


def _counters(stack: LocalStack) -> dict[str, float]:
    return NodeState(stack.broker_redis.client(), stack.qpu_id).counters()


def _normal_job_seconds(stack: LocalStack) -> float:
    started = time.monotonic()
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok"), 10)
    assert stack.cloud.wait_for_result(job_id, timeout_sec=30)["status"] == "completed"
    return time.monotonic() - started


@pytest.mark.parametrize("mode", MODES)
def test_a_run_whose_process_dies_fails_once_after_three_attempts_and_the_next_job_runs_at_once(
    tmp_path: Path, mode: str
) -> None:
    # Given a node (in each of its three modes) whose executor crashes its process on two jobs
    with LocalStack(tmp_path, env=stack_env(tmp_path, **FAST_LIMITS), mode=mode) as stack:
        assert _normal_job_seconds(stack) < 30  # the executor is built
        worker = _jobs_process(stack)

        for how, named in (("exit", "exit code 1"), ("segv", "signal 11 (SIGSEGV)")):
            # When a job's run calls os._exit(1), or segfaults
            job_id = stack.cloud.submit(stack.qpu_id, circuit(how, tag=how), 10)
            result = stack.cloud.wait_for_result(job_id, timeout_sec=60)

            # Then it ran 3 times and ended as one failed result naming how its process died
            assert result["status"] == "failed"
            assert f"died with {named} on each of 3 attempts" in result["error"], result["error"]
            assert executor_runs(stack, how) == 3
            wait_until(lambda j=job_id: status(stack, j).get("state") == "failed", 10, "the failed status")
            # and a normal job sent right after it completes in normal time
            assert _normal_job_seconds(stack) < NORMAL_JOB_SEC
            assert len(deliveries(stack, job_id)) == 1

        # and nothing is pending; the worker (or the one process) was never lost
        wait_until(lambda: _nothing_pending(stack), 10, "every stream entry acknowledged")
        assert _jobs_process(stack) == worker
        assert stack.running("node" if mode == "one-process" else "jobs")
        # and /metrics counts the six lost processes
        assert _counters(stack)["executor_processes_died"] == 6
        assert stack.cloud.stats(stack.qpu_id)["duplicate_deliveries"] == 0


def test_a_run_that_cannot_be_stopped_fails_alone_and_the_jobs_behind_it_run(tmp_path: Path) -> None:
    # Given a 3 s time limit, a 1 s grace, and a run that ignores its cancel (which blocks too)
    limits = {**FAST_LIMITS, "CODA_JOB_TIME_LIMIT_SEC": "3", "CODA_EXECUTOR_STOP_GRACE_SEC": "1"}
    env = stack_env(tmp_path, **limits)
    with LocalStack(tmp_path, env=env) as stack:
        assert _normal_job_seconds(stack) < 30
        started = time.monotonic()

        # When the stuck job is followed by four normal jobs
        stuck = stack.cloud.submit(stack.qpu_id, circuit("stuck", tag="stuck"), 10)
        behind = [stack.cloud.submit(stack.qpu_id, circuit("ok", tag=f"behind-{i}"), 10) for i in range(4)]
        results = stack.cloud.wait_for_results([stuck, *behind], timeout_sec=60)

        # Then only the stuck job fails, naming the real limit, and the others ran and completed
        assert results[stuck]["status"] == "failed"
        assert "time limit of 3 s (job_time_limit_sec)" in results[stuck]["error"]
        assert [results[j]["status"] for j in behind] == ["completed"] * 4
        assert [executor_runs(stack, f"behind-{i}") for i in range(4)] == [1] * 4
        assert time.monotonic() - started < 3 + 1 + NORMAL_JOB_SEC + 5
        assert "its process was killed" in stack.log_tail("jobs", 200)
        assert _counters(stack)["executor_processes_killed"] == 1
        wait_until(lambda: _nothing_pending(stack), 10, "every stream entry acknowledged")
