"""Executors with batch_run: waiting jobs run together, one result per job, one by one on failure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import (
    FAST_LIMITS,
    circuit,
    deliveries,
    executor_runs,
    restart_worker_with_failpoint,
    stack_env,
)

from coda_bridge.dev.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def _batching_stack(workdir: Path) -> Iterator[LocalStack]:
    env = stack_env(workdir, **FAST_LIMITS, CODA_EXECUTOR_FACTORY="coda_test_executor:create_batch_executor")
    with LocalStack(workdir, env=env) as node:
        first = node.cloud.submit(
            node.qpu_id, circuit(), 10
        )  # resolves the executor, which reports batch_run
        node.cloud.wait_for_results([first], timeout_sec=20)
        yield node


@pytest.fixture(scope="module")
def batch_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with _batching_stack(tmp_path_factory.mktemp("batch")) as node:
        yield node


def _batches(workdir: Path) -> list[int]:
    lines = (workdir / "executor.log").read_text().splitlines()
    return [int(line.split()[1]) for line in lines if line.startswith("batch ")]


def _submit_while_bridge_is_down(stack: LocalStack, tags: list[str]) -> list[str]:
    stack.children["bridge"].stop()
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok", tag=tag), 10) for tag in tags]
    stack.start_process("bridge")
    return ids


def test_waiting_jobs_run_in_batches_of_batch_size(batch_stack: LocalStack) -> None:
    before = len(_batches(batch_stack.workdir))
    tags = [f"b{i}" for i in range(25)]

    ids = _submit_while_bridge_is_down(batch_stack, tags)
    results = batch_stack.cloud.wait_for_results(ids, timeout_sec=30)

    assert {r["status"] for r in results.values()} == {"completed"}
    assert _batches(batch_stack.workdir)[before:] == [10, 10, 5]
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
def test_a_batch_recorded_before_a_kill_is_delivered_once_and_never_run_again(tmp_path: Path) -> None:
    with _batching_stack(tmp_path) as stack:
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
