"""The device's next job is prepared ahead (issue 24), and that state is never lost, doubled or run cancelled.

While one job runs, the jobs worker's second thread holds the next one
claimed and checked.  On a real node (the Procfile's lines, so the jobs
worker can be signalled and restarted on its own): a job cancelled while
it waits ahead never runs; a kill -9 of the executor's process with a job
waiting ahead loses nothing and runs the waiting job once; a drain lets
the running job finish and sends the waiting one back to the queue,
unstarted, for the next worker.  The tests share one node (each leaves it
running, with its own tags), as a node meets these one after another.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest
from pipeline_support import circuit, deliveries, executor_runs, status

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.state.broker_keys import claim_key
from coda_bridge.state.node_state import NodeState

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

#: How long the running job takes: the next one is prepared well within it.
RUNNING_SEC = 3.0


def _prepared(stack: LocalStack, job_id: str) -> bool:
    """Whether a worker holds the job's claim (taken from the queue, claimed, checked)."""
    return bool(stack.broker_redis.client().exists(claim_key(stack.qpu_id, job_id)))


def _running_and_one_prepared(stack: LocalStack, tag: str) -> tuple[str, str]:
    """A long job (tagged ``<tag>-running``) running and a short one (tagged ``tag``) waiting ahead."""
    running = stack.cloud.submit(stack.qpu_id, circuit(f"sleep:{RUNNING_SEC}", tag=f"{tag}-running"), 10)
    wait_until(lambda: executor_runs(stack, f"{tag}-running") == 1, 30, "the long job to run")
    waiting = stack.cloud.submit(stack.qpu_id, circuit("ok", tag=tag), 10)
    wait_until(lambda: _prepared(stack, waiting), RUNNING_SEC / 2, "the next job to be claimed ahead")
    assert executor_runs(stack, tag) == 0
    return running, waiting


def _executor_process(stack: LocalStack) -> psutil.Process:
    """The jobs worker's executor process: the one below the dramatiq worker process."""
    master = psutil.Process(stack.children["jobs"].pid)
    workers = {child.pid for child in master.children()}
    found = [p for p in master.children(recursive=True) if p.ppid() in workers]
    assert len(found) == 1, found
    return found[0]


def test_a_job_cancelled_while_it_waits_ahead_never_runs(stack: LocalStack) -> None:
    # Given a node running a long job, with the next job claimed and checked ahead of the device
    running, waiting = _running_and_one_prepared(stack, "cancelled")

    # When the cloud cancels the waiting job before the device is free
    stack.cloud.cancel(waiting)
    wait_until(lambda: status(stack, waiting).get("state") == "cancelled", 10, "the cancelled status")

    # Then the running job completes, the cancelled one was never started
    assert stack.cloud.wait_for_result(running, timeout_sec=30)["status"] == "completed"
    follow = stack.cloud.submit(stack.qpu_id, circuit("ok", tag="after"), 10)
    assert stack.cloud.wait_for_result(follow, timeout_sec=30)["status"] == "completed"
    assert executor_runs(stack, "cancelled") == 0
    assert deliveries(stack, waiting) == []
    assert not _prepared(stack, waiting)


def test_a_kill_9_of_the_executor_process_with_a_job_waiting_ahead_loses_nothing(stack: LocalStack) -> None:
    # Given a node running a long job, with the next job claimed and checked ahead of the device
    running, waiting = _running_and_one_prepared(stack, "waiting")

    # When the executor's process is killed -9 mid-run
    _executor_process(stack).kill()

    # Then the running job runs again in a fresh process (its crash policy) and completes, once
    assert stack.cloud.wait_for_result(running, timeout_sec=30)["status"] == "completed"
    assert stack.cloud.wait_for_result(waiting, timeout_sec=30)["status"] == "completed"
    assert executor_runs(stack, "waiting-running") == 2
    # and the job waiting ahead ran exactly once, after it; each result was delivered once
    assert executor_runs(stack, "waiting") == 1
    assert len(deliveries(stack, running)) == 1
    assert len(deliveries(stack, waiting)) == 1
    assert stack.cloud.stats(stack.qpu_id)["duplicate_deliveries"] == 0


def test_a_drain_finishes_the_running_job_and_sends_the_waiting_one_back_unstarted(stack: LocalStack) -> None:
    # Given a node running a long job, with the next job claimed and checked ahead of the device
    running, waiting = _running_and_one_prepared(stack, "drained")

    # When the jobs worker is told to stop (SIGTERM: its drain)
    jobs = stack.children["jobs"]
    jobs.signal(signal.SIGTERM)
    wait_until(lambda: not jobs.alive(), 30, "the jobs worker to drain and exit")

    # Then the running job finished and was recorded; the waiting one never started and holds no claim
    assert stack.cloud.wait_for_result(running, timeout_sec=30)["status"] == "completed"
    assert executor_runs(stack, "drained") == 0
    assert not _prepared(stack, waiting)
    assert status(stack, waiting).get("state") not in {"completed", "failed", "cancelled"}

    # and the next jobs worker finds it in the queue and runs it, once
    stack.start_process("jobs")
    assert stack.cloud.wait_for_result(waiting, timeout_sec=60)["status"] == "completed"
    assert executor_runs(stack, "drained") == 1
    assert len(deliveries(stack, waiting)) == 1


def test_the_running_mark_names_the_running_job_not_the_one_queued_behind_it(stack: LocalStack) -> None:
    # Given a node running a long job, with the next job claimed, checked and queued behind it
    running, waiting = _running_and_one_prepared(stack, "queued")
    state = NodeState(stack.broker_redis.client(), stack.qpu_id)

    # When the long job is still on the device (looked at for a third of its run)
    seen = set()
    deadline = time.monotonic() + RUNNING_SEC / 3
    while time.monotonic() < deadline:
        seen.add((tuple(state.current_jobs()), status(stack, waiting).get("state")))

    # Then the running mark (current_job) named it alone, and the queued job was never shown executing
    assert {marked for marked, _ in seen} == {(running,)}
    assert "executing" not in {shown for _, shown in seen}
    # and the queued job runs once, when the device is free
    assert stack.cloud.wait_for_result(running, timeout_sec=30)["status"] == "completed"
    assert stack.cloud.wait_for_result(waiting, timeout_sec=30)["status"] == "completed"
    assert executor_runs(stack, "queued") == 1
