"""A broker at maxmemory under noeviction while jobs flow, then memory back: every job completes, once
(issue 23, item 1). A real node (bridge, workers, probes app) on a private broker redis-server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pipeline_support import FAST_LIMITS, circuit, executor_runs, stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until

#: How long the broker refuses writes while jobs keep coming.
OUTAGE_SEC = 8
#: Jobs sent before, during and after the outage (each batch).
JOBS_PER_BATCH = 5
#: How long each job runs on the device (so some are mid-run when the broker starts refusing).
JOB_SEC = 0.5
#: The reconcile period of this node (claim_idle_sec / 3), and what a busy machine adds to it.
RECONCILE_SEC = 5 / 3
MARGIN_SEC = 20


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalStack]:
    env = stack_env(tmp_path, **FAST_LIMITS, CODA_READY_STREAM_STALE_SEC="30")
    with LocalStack(tmp_path, env=env, web=True) as stack:
        stack.broker_redis.client().config_set("maxmemory-policy", "noeviction")
        yield stack
        stack.broker_redis.client().config_set("maxmemory", "0")


def ready_reason(stack: LocalStack) -> str:
    """Why the node is not ready ("" when it is)."""
    try:
        answer = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).json()
    except requests.RequestException as exc:
        return f"no answer: {exc}"
    return str(answer.get("reason") or "")


def submit(stack: LocalStack, tags: list[str]) -> list[str]:
    return [stack.cloud.submit(stack.qpu_id, circuit("sleep", tag=f"{JOB_SEC}:{tag}"), 100) for tag in tags]


@pytest.mark.e2e
def test_jobs_sent_while_the_broker_refuses_writes_all_complete_once_after_memory_returns(
    node: LocalStack,
) -> None:
    broker = node.broker_redis.client()
    wait_until(lambda: ready_reason(node) == "", 60, "the node to be ready")
    # given jobs flowing
    tags = [f"t{n}" for n in range(3 * JOBS_PER_BATCH)]
    jobs = submit(node, tags[:JOBS_PER_BATCH])
    wait_until(lambda: any(executor_runs(node, t) for t in tags[:JOBS_PER_BATCH]), 30, "a job to start")
    # when the broker reaches maxmemory under noeviction, and more jobs come while it refuses writes
    broker.config_set("maxmemory", "1")
    done = {job for job, result in node.cloud.results().items() if result is not None}
    mid_run = {t for t, job in zip(tags, jobs, strict=False) if executor_runs(node, t) and job not in done}
    outage_started = time.monotonic()
    jobs += submit(node, tags[JOBS_PER_BATCH : 2 * JOBS_PER_BATCH])
    # then /ready names the refusal while it lasts
    wait_until(lambda: "the local broker refuses writes: OOM" in ready_reason(node), 10, "/ready to name OOM")
    time.sleep(max(OUTAGE_SEC - (time.monotonic() - outage_started), 0))  # the outage lasts; nothing to poll
    assert "the local broker refuses writes: OOM" in ready_reason(node)
    # when memory returns (no restart), and more jobs come
    broker.config_set("maxmemory", "0")
    restored = time.monotonic()
    jobs += submit(node, tags[2 * JOBS_PER_BATCH :])
    # then every job completes, within a reconcile period, the device's time for the jobs (one at a time)
    # and a margin, each run once on the device
    results = node.cloud.wait_for_results(jobs, timeout_sec=RECONCILE_SEC + len(jobs) * JOB_SEC + MARGIN_SEC)
    took = time.monotonic() - restored
    assert {r["status"] for r in results.values()} == {"completed"}, results
    # (a job mid-run when the refusal began may run again: its run's metrics are written before its result
    # is recorded, and that write is refused; issue 23 item 2, "observations never cost a run", fixes it)
    assert {t: executor_runs(node, t) for t in tags if t not in mid_run} == {
        t: 1 for t in tags if t not in mid_run
    }
    assert all(executor_runs(node, t) <= 2 for t in mid_run)
    wait_until(lambda: ready_reason(node) == "", 10, "/ready to be ready again")
    # and the logs name the cause once (one web worker), fail no job at intake and find no "bug" in dramatiq
    logs = "".join(child.log_path.read_text(errors="replace") for child in node.children.values())
    assert logs.count("coda_bridge.queueing.refusal: the local broker refuses writes: OOM") == 1
    assert "coda_bridge.queueing.refusal: The local broker takes writes again." in logs
    assert "failed at intake" not in logs
    assert "You've found a bug in Dramatiq" not in logs
    # and an expected outage costs no traceback and nothing CRITICAL (issue 22, one line each)
    assert logs.count("Traceback") == 0, logs[-5000:]
    assert logs.count("CRITICAL") == 0, logs[-5000:]
    print(f"every job completed {took:.1f} s after memory returned")
