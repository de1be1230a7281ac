"""What the executor worker does with its executor: a broken factory fails jobs, never loses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import circuit, stack_env, status

from coda_bridge.dev.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e


def test_a_broken_executor_factory_fails_jobs_with_a_clear_error(tmp_path: Path) -> None:
    env = stack_env(tmp_path, CODA_EXECUTOR_FACTORY="no_such_module:create_executor")
    with LocalStack(tmp_path, env=env) as stack:
        job_id = stack.cloud.submit(stack.qpu_id, circuit(), 10)

        result = stack.cloud.wait_for_result(job_id, timeout_sec=20)

        assert result["status"] == "failed"
        assert "Executor unavailable" in result["error"]
        assert "no_such_module" in result["error"]
        wait_until(lambda: status(stack, job_id).get("state") == "failed", 10, "the failed status")
        assert "Executor unavailable" in stack.log_tail("jobs", 100)
