"""Jobs through real processes: results, bad input, cancellation, time limits."""

from __future__ import annotations

import json

import pytest
from pipeline_support import circuit, deliveries, executor_cancels, executor_runs, status

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.state.node_state import NodeState

pytestmark = pytest.mark.e2e


def test_500_jobs_arrive_correct_once_each(stack: LocalStack) -> None:
    ids = stack.cloud.submit_bulk(stack.qpu_id, 500, circuit("ok", tag="bulk"), 100, expect="noop")

    results = stack.cloud.wait_for_results(ids, timeout_sec=120)

    assert len(results) == 500
    assert all(r["status"] == "completed" and r["counts"] == {"00": 100} for r in results.values())
    stats = stack.cloud.stats(stack.qpu_id)
    assert stats["duplicate_deliveries"] == 0
    assert stats["content_mismatches"] == 0
    assert stats["expect_failures"] == 0

    # and each status hash says completed (written just after its result's POST: a batch's, after the
    # batch's last POST)
    def states() -> set[str]:
        pipe = stack.cloud_redis.client().pipeline()
        for job_id in ids:
            pipe.hget(f"qpu:job:{job_id}:status", "state")
        return set(pipe.execute())

    wait_until(lambda: states() == {"completed"}, 30, "every status hash to say completed")


BAD_INPUT = [
    (
        "illegal gate",
        {"ir": {**circuit(), "gates": [{"gate": "cnot", "qubits": [0, 1]}]}},
        "not legal for target",
    ),
    ("qubit out of range", {"ir": {**circuit(), "measurements": [0, 7]}}, "outside [0, 2)"),
    ("unknown target", {"ir": {**circuit(), "target": "xy"}}, "Unknown target"),
    ("ir_json not JSON", {"ir_json": "{not json"}, "JSON"),
    ("shots abc", {"ir": circuit(), "shots": "abc"}, "shots must be an integer"),
    ("shots -5", {"ir": circuit(), "shots": "-5"}, "shots must be an integer"),
    ("shots 0", {"ir": circuit(), "shots": "0"}, "got 0"),
    ("shots 1e9", {"ir": circuit(), "shots": "1e9"}, "shots must be an integer"),
    ("1 MB ir_json", {"ir_json": json.dumps({**circuit(), "pad": "x" * 1_000_000})}, ""),
    ("executor raises", {"ir": circuit("raise")}, "device on fire"),
    ("executor returns a string", {"ir": circuit("wrongtype")}, "Executor error"),
    ("executor hangs past the limit", {"ir": circuit("hang")}, "time limit of 6 s"),
]


@pytest.mark.parametrize(("case", "job", "needle"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_ends_as_a_clear_failed_result(
    stack: LocalStack, case: str, job: dict, needle: str
) -> None:
    job_id = stack.cloud.submit(
        stack.qpu_id, job.get("ir"), job.get("shots", 10), ir_json=job.get("ir_json"), validate=False
    )
    good = stack.cloud.submit(stack.qpu_id, circuit(), 10)

    results = stack.cloud.wait_for_results([job_id, good], timeout_sec=30)

    assert results[good]["status"] == "completed"
    if case == "1 MB ir_json":  # unknown top-level fields are fine; a big circuit must not break anything
        assert results[job_id]["status"] in ("completed", "failed")
        return
    assert results[job_id]["status"] == "failed"
    assert needle in results[job_id]["error"]
    assert len(results[job_id]["error"]) <= 500
    wait_until(lambda: status(stack, job_id).get("state") == "failed", 10, "the failed status")


@pytest.mark.parametrize("missing", ["job_id", "callback_url"])
def test_a_message_without_job_id_or_callback_is_skipped(stack: LocalStack, missing: str) -> None:
    state = NodeState(stack.broker_redis.client(), stack.qpu_id)
    before = state.counters()["jobs_skipped"]
    bad = stack.cloud.submit(stack.qpu_id, circuit(), 10, omit_fields=[missing])
    good = stack.cloud.submit(stack.qpu_id, circuit(), 10)

    stack.cloud.wait_for_results([good], timeout_sec=20)

    wait_until(lambda: state.counters()["jobs_skipped"] == before + 1, 10, "the skip to be counted")
    assert deliveries(stack, bad) == []
    assert "has no " + missing in stack.log_tail("jobs", 200)


def test_cancel_before_start_sends_nothing(stack: LocalStack) -> None:
    blocker = stack.cloud.submit(stack.qpu_id, circuit("sleep:1.5"), 10)
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok", tag="never-run"), 10)
    stack.cloud.cancel(job_id)

    stack.cloud.wait_for_results([blocker], timeout_sec=20)
    wait_until(lambda: status(stack, job_id).get("state") == "cancelled", 10, "the cancelled status")

    assert deliveries(stack, job_id) == []
    assert executor_runs(stack, "never-run") == 0
    assert {"cancelled_at", "message_id", "qpu_id"} <= set(status(stack, job_id))


def test_cancel_during_a_run_stops_the_executor_and_sends_nothing(stack: LocalStack) -> None:
    cancels_before = executor_cancels(stack)
    job_id = stack.cloud.submit(stack.qpu_id, circuit("sleep:20", tag="long"), 10)
    wait_until(lambda: status(stack, job_id).get("state") == "executing", 20, "the job to start")

    stack.cloud.cancel(job_id)

    wait_until(lambda: status(stack, job_id).get("state") == "cancelled", 10, "the cancelled status")
    wait_until(lambda: executor_cancels(stack) == cancels_before + 1, 5, "cancel_current_job()")
    after = stack.cloud.submit(stack.qpu_id, circuit(), 10)
    stack.cloud.wait_for_results([after], timeout_sec=20)
    assert deliveries(stack, job_id) == []


def test_a_completed_job_sent_again_is_skipped(stack: LocalStack) -> None:
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok", tag="once"), 10)
    stack.cloud.wait_for_results([job_id], timeout_sec=20)
    wait_until(lambda: status(stack, job_id).get("state") == "completed", 10, "the completed status")
    fields = stack.cloud.job(job_id)["fields"]

    stack.cloud_redis.client().xadd(f"qpu:{stack.qpu_id}:jobs", fields)
    probe = stack.cloud.submit(stack.qpu_id, circuit(), 10)
    stack.cloud.wait_for_results([probe], timeout_sec=20)

    assert executor_runs(stack, "once") == 1
    assert len(deliveries(stack, job_id)) == 1


def test_no_secret_in_any_process_log(stack: LocalStack) -> None:
    job_id = stack.cloud.submit(stack.qpu_id, circuit("raise"), 10)
    stack.cloud.wait_for_results([job_id], timeout_sec=20)
    key_lines = (stack.state_dir / "coda-private-key").read_text().splitlines()[1:-1]
    token = stack.extra_env["CODA_NODE_TOKEN"]

    for name in stack.children:
        log = (stack.workdir / f"{name}.log").read_text()
        assert token not in log, name
        assert not any(line in log for line in key_lines), name
        assert "eyJ" not in log, name


def test_a_callback_off_the_clouds_host_is_never_called(stack: LocalStack) -> None:
    job_id = stack.cloud.submit(
        stack.qpu_id, circuit("ok", tag="offhost"), 10, callback_url="http://203.0.113.9/cb"
    )

    wait_until(lambda: status(stack, job_id).get("state") == "failed", 20, "the failed status")

    assert "not the cloud's host" in status(stack, job_id)["error"]
    assert executor_runs(stack, "offhost") == 0
    assert "203.0.113.9" in stack.log_tail("jobs", 50)
