"""Two bridges for one QPU on one broker: jobs are split, none runs twice at once, none is stolen.

Each test runs a whole node (real Redis twice, the simulator, dramatiq
workers) with a second bridge under another consumer name, as a second
host would run it, and the tagged executor of the fault suite, whose log
places every run in time.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from fault_support import SUPPORT, executor_runs
from pipeline_support import SUITE_RESULT_PROCESSES, bell

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def _env(workdir: Path, executor_sec: float, claim_idle_sec: float) -> dict[str, str]:
    return {
        "CODA_EXECUTOR_FACTORY": "fault_support:create_executor",
        "FAULT_EXECUTOR_LOG": str(workdir / "runs.log"),
        "FAULT_EXECUTOR_SEC": str(executor_sec),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])),
        "CODA_CLAIM_IDLE_SEC": str(claim_idle_sec),
        "CODA_WORKER_HEARTBEAT_TIMEOUT_SEC": "5",
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES,
    }


def _overlaps(runs: list[tuple[float, float | None]]) -> bool:
    ordered = sorted(runs)
    return any(end is not None and later < end for (_, end), (later, _) in itertools.pairwise(ordered))


def test_a_killed_bridge_s_jobs_are_finished_by_the_other_each_delivered_once(tmp_path: Path) -> None:
    # Given a node with a second bridge for the same QPU
    with LocalStack(tmp_path, env=_env(tmp_path, executor_sec=0.05, claim_idle_sec=3)) as stack:
        stack.start_process("bridge#b", env={"CODA_CONSUMER_NAME": "bridge-b"})
        cloud = stack.cloud
        tags = [f"two-{n:03d}" for n in range(60)]
        ids = [
            cloud.submit(stack.qpu_id, bell(tag), 10, job_id=f"job-{tag}", expect="noop") for tag in tags[:30]
        ]
        wait_until(
            lambda: sum(1 for r in cloud.results(stack.qpu_id).values() if r) >= 5, 60, "first results"
        )

        # When the first bridge is killed -9 while jobs are in flight, and more jobs keep coming
        stack.kill9("bridge")
        ids += [
            cloud.submit(stack.qpu_id, bell(tag), 10, job_id=f"job-{tag}", expect="noop") for tag in tags[30:]
        ]

        # Then every job is delivered exactly once, and none ran twice at once
        results = cloud.wait_for_results(ids, timeout_sec=120)
        assert all(results[j]["status"] == "completed" for j in ids)
        assert [j for j in ids if len(cloud.webhooks(j, accepted=True)) != 1] == []
        runs = executor_runs(tmp_path / "runs.log")
        assert [tag for tag in tags if _overlaps(runs.get(tag, []))] == []
        assert sorted(runs) == sorted(tags), "every job ran"


def test_a_job_longer_than_claim_idle_is_not_claimed_by_a_live_second_bridge(tmp_path: Path) -> None:
    # Given two live bridges, and entries that count as idle after 3 s (each bridge's pass resets its
    # entries' idle time every second: a stalled second of a busy machine is no claim)
    with LocalStack(tmp_path, env=_env(tmp_path, executor_sec=12.0, claim_idle_sec=3)) as stack:
        stack.start_process("bridge#b", env={"CODA_CONSUMER_NAME": "bridge-b"})
        cloud = stack.cloud

        # When a job runs four times longer than that
        job = cloud.submit(stack.qpu_id, bell("long-one"), 10, job_id="job-long-one", expect="noop")
        result = cloud.wait_for_result(job, timeout_sec=60)

        # Then it ran once, was delivered once, and no bridge claimed it from the other
        assert result["status"] == "completed"
        assert len(executor_runs(tmp_path / "runs.log")["long-one"]) == 1
        assert len(cloud.webhooks(job, accepted=True)) == 1
        for name in ("bridge", "bridge#b"):
            assert "Claimed" not in stack.log_tail(name, 400), stack.log_tail(name)
