"""Observations never cost a run: a broker that refuses the metric writes after a run (real processes)."""

from __future__ import annotations

import pytest
from pipeline_support import circuit, executor_runs

from coda_bridge.devtools.stack import LocalStack
from coda_bridge.metrics.histograms import JOB_DURATION, Histograms

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def test_a_refused_metrics_write_after_a_run_neither_reruns_the_job_nor_loses_its_result(
    fresh_stack: LocalStack,
) -> None:
    # given: the job-duration histogram's key holds a string, so the broker answers WRONGTYPE to its writes
    stack = fresh_stack
    broker = stack.broker_redis.client()
    histogram_key = Histograms(broker, stack.qpu_id).key(JOB_DURATION.name)
    broker.set(histogram_key, "not a hash")

    # when: a job runs
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok", tag="observed"), 10)
    result = stack.cloud.wait_for_result(job_id, timeout_sec=60)

    # then: it ran once, its result arrived, and the refusal is one warning naming what was lost
    assert result["status"] == "completed"
    assert executor_runs(stack, "observed") == 1
    assert broker.get(histogram_key) == "not a hash"
    log = stack.children["jobs"].log_path.read_text(errors="replace")
    assert log.count("Executor time not written to the broker Redis") == 1
    assert "WRONGTYPE" in log
