"""Helpers of the pipeline tests: circuits for the test executor, and what the cloud saw."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from coda_bridge.devtools.stack import LocalStack, wait_until

SUPPORT = Path(__file__).resolve().parent
#: Short limits so time-limit and retry tests finish quickly.
FAST_LIMITS = {"CODA_JOB_TIME_LIMIT_SEC": "6", "CODA_WEBHOOK_MAX_RETRIES": "3"}
#: A short claim lease (60 cancel polls here): a killed jobs worker's job runs again soon after.
CLAIM_LEASE_SEC = "3"


def bell(source_hash: str, *, target: str = "cz", n: int = 2) -> dict[str, Any]:
    """A small valid circuit (ry, cz) measuring ``n`` qubits, carrying ``source_hash``."""
    return {
        "version": "1.0",
        "target": target,
        "num_qubits": n,
        "gates": [
            {"gate": "ry", "qubits": [0], "params": [1.5707963]},
            {"gate": "cz", "qubits": [0, 1], "params": []},
        ],
        "measurements": list(range(n)),
        "metadata": {"source_hash": source_hash, "compiled_at": "2026-01-01T00:00:00Z"},
    }


def circuit(mode: str = "ok", *, tag: str | None = None, target: str = "cz", n: int = 2) -> dict[str, Any]:
    """A small valid circuit whose source_hash tells the test executor what to do."""
    return bell(f"{mode}:{tag or uuid.uuid4().hex}", target=target, n=n)


#: Delivery processes of the suite's nodes: one, where a test does not test the results layout (each
#: process costs about 0.5 s of CPU to boot, and the suite starts ~100 nodes; issue 20).
SUITE_RESULT_PROCESSES = "1"
#: The shipped layout's delivery processes, for a test that proves a guarantee on it.
PRODUCTION_RESULT_PROCESSES = "2"


def stack_env(workdir: Path, **extra: str) -> dict[str, str]:
    """A test node's environment: the test executor, fast ticks, deliveries in one process."""
    env = {
        "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES,
        "CODA_EXECUTOR_FACTORY": "coda_test_executor:create_executor",
        "PIPELINE_TEST_EXECUTOR_LOG": str(workdir / "executor.log"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])),
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_VPN_CHECK_INTERVAL_SEC": "1",
        "CODA_CANCEL_POLL_INTERVAL_SEC": "0.05",
        "CODA_WORKER_HEARTBEAT_TIMEOUT_SEC": "5",
        "CODA_CLAIM_IDLE_SEC": "5",
        "CODA_CLAIM_LEASE_SEC": CLAIM_LEASE_SEC,
        "CODA_WEBHOOK_MAX_BACKOFF_SEC": "2",
    }
    env.update(extra)
    return env


def executor_runs(stack: LocalStack, tag: str) -> int:
    """How many times the test executor started the job tagged ``tag``."""
    path = stack.workdir / "executor.log"
    if not path.exists():
        return 0
    return sum(
        1 for line in path.read_text().splitlines() if line.startswith("run ") and line.endswith(f":{tag}")
    )


def executor_cancels(stack: LocalStack) -> int:
    path = stack.workdir / "executor.log"
    return path.read_text().splitlines().count("cancel") if path.exists() else 0


def status(stack: LocalStack, job_id: str) -> dict[str, str]:
    """The cloud's status hash of a job (the client decodes responses)."""
    fields: dict[str, str] = stack.cloud_redis.client().hgetall(f"qpu:job:{job_id}:status")  # type: ignore[assignment]
    return fields


def deliveries(stack: LocalStack, job_id: str) -> list[dict[str, Any]]:
    return [w for w in stack.cloud.webhooks() if w.get("job_id") == job_id]


def _boots(stack: LocalStack, name: str) -> int:
    return (
        stack.children[name].log_path.read_text(errors="replace").count("Worker process is ready for action")
    )


def restart_worker_with_failpoint(stack: LocalStack, name: str, failpoints: str) -> None:
    """Restart the dramatiq worker ``name`` with ``CODA_FAILPOINTS`` and wait until all its processes booted.

    A worker process that dies while it reports its boot can leave dramatiq's master waiting forever
    on the boot event's lock, so no work may reach it before then.
    """
    argv = stack.specs()[name].argv
    processes = int(argv[argv.index("--processes") + 1])
    stack.children[name].stop()
    booted = _boots(stack, name)  # its log is kept across restarts
    stack.start_process(name, env={"CODA_FAILPOINTS": failpoints})
    wait_until(lambda: _boots(stack, name) >= booted + processes, 30, f"the {name} worker to boot")
