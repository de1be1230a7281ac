"""An executor that cannot be built stops the jobs worker at boot: jobs wait, /ready says why, start stops.
One still building keeps /ready 503 until it is built.

Real processes: a whole local node (bridge, dramatiq workers, probes app
under gunicorn) against the local cloud simulator, and ``coda-bridge start``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from gated_executor import building, gated_env, open_gate
from pipeline_support import SUITE_RESULT_PROCESSES

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.queueing.queues import JOBS_QUEUE
from coda_bridge.queueing.redis_broker import broker_namespace
from coda_bridge.state.node_state import NodeState
from coda_bridge.state.registry import ready_jobs_workers

pytestmark = pytest.mark.e2e

FACTORY = "boot_test_factory:create_executor"
#: The text the factory raises while its device file "has a typo".
TYPO = "device file site/device.yaml: unknown key 'runer_mode'"
#: How long a jobs worker may take to give up (seconds).
GIVE_UP_SEC = 60
#: How long the probes, the bridge and a fixed worker may take to show a state (seconds).
SETTLE_SEC = 30
#: Longest ``coda-bridge start`` may take to stop on its own (seconds).
START_TIMEOUT_SEC = 90
#: /ready's reason while no jobs worker has built its executor.
NO_JOBS_WORKER = "no running jobs worker has a built executor"

FACTORY_SOURCE = f'''
"""Raises at build time until a file named FIXED sits beside it; then an all-zeros executor."""
from pathlib import Path

FIXED = Path(__file__).with_name("FIXED")


class ZerosExecutor:
    def run(self, ir, shots):
        return {{"counts": {{"0" * len(ir.measurements): shots}}, "execution_time_ms": 0.0,
                 "shots_completed": shots}}


def create_executor(settings):
    if not FIXED.exists():
        raise ValueError({TYPO!r})
    return ZerosExecutor()
'''

CIRCUIT = {
    "target": "cz",
    "num_qubits": 2,
    "gates": [{"gate": "ry", "qubits": [0], "params": [1.0]}],
    "measurements": [0, 1],
    "metadata": {"source_hash": "boot", "compiled_at": "2026-01-01T00:00:00Z"},
}


def factory_env(directory: Path) -> dict[str, str]:
    """A factory module that fails to build, and the environment that selects it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "boot_test_factory.py").write_text(textwrap.dedent(FACTORY_SOURCE), encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    return {
        "CODA_EXECUTOR_FACTORY": FACTORY,
        "PYTHONPATH": path,
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_VPN_CHECK_INTERVAL_SEC": "1",
        "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES,
    }


def ready(stack: LocalStack) -> tuple[int, dict[str, Any]] | None:
    try:
        response = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=10)
    except requests.RequestException:
        return None
    body: dict[str, Any] = response.json()
    return response.status_code, body


def test_a_factory_raising_at_build_leaves_the_job_waiting_and_ready_503(tmp_path: Path) -> None:
    # given a node whose executor factory raises at build time, and a job submitted to it
    mods = tmp_path / "mods"
    (tmp_path / "node").mkdir()
    with LocalStack(tmp_path / "node", env=factory_env(mods), web=True) as stack:
        job_id = stack.cloud.submit(stack.qpu_id, CIRCUIT, 10)

        # when the jobs worker boots
        jobs = stack.children["jobs"]
        wait_until(lambda: not jobs.alive(), GIVE_UP_SEC, "the jobs worker to give up")

        # then it exits with EX_CONFIG after one line naming the factory and its error
        assert jobs.process.returncode == EX_CONFIG
        reasons = [line for line in stack.log_tail("jobs", 200).splitlines() if "cannot be built" in line]
        assert len(reasons) == 1, reasons
        assert FACTORY in reasons[0]
        assert TYPO in reasons[0]
        # and /ready answers 503 naming the executor
        answer = wait_until(
            lambda: (got := ready(stack)) and "executor" in got[1].get("reason", "") and got,
            SETTLE_SEC,
            "/ready to name the executor",
        )
        assert answer[0] == 503
        assert answer[1]["ready"] is False
        assert f"executor factory {FACTORY} raised ValueError" in answer[1]["reason"]
        # and the job is unfinished, not failed: it waits in the node's queue with no result
        queue_key = f"{broker_namespace(stack.qpu_id)}:{JOBS_QUEUE}"
        broker = stack.broker_redis.client()
        wait_until(lambda: broker.llen(queue_key) == 1, SETTLE_SEC, "the job to wait in the jobs queue")
        assert stack.cloud.result(job_id) is None
        state = stack.cloud_redis.client().hget(f"qpu:job:{job_id}:status", "state")
        assert state is None or state.decode() not in ("completed", "failed", "cancelled")

        # when the factory is fixed and the jobs worker started again
        (mods / "FIXED").touch()
        stack.start_process("jobs")

        # then the waiting job completes and /ready answers 200
        result = stack.cloud.wait_for_result(job_id, SETTLE_SEC)
        assert result["status"] == "completed", result
        assert result["counts"] == {"00": 10}
        wait_until(lambda: (got := ready(stack)) and got[0] == 200, SETTLE_SEC, "/ready to answer 200")


def test_start_stops_with_ex_config_when_the_executor_cannot_be_built(tmp_path: Path) -> None:
    # given a registered QPU, a fresh token and an executor factory that raises at build time
    (tmp_path / "node").mkdir()
    stack = LocalStack(tmp_path / "node")
    try:
        stack.start(processes=False)
        env = stack.env()
        env.update(factory_env(tmp_path / "mods"))
        env["CODA_NODE_TOKEN"] = stack.cloud.mint_token(stack.qpu_id)
        env["CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC"] = "10"

        # when the node is started as one supervised group
        done = subprocess.run(
            [sys.executable, "-m", "coda_bridge", "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SEC,
            check=False,
        )
    finally:
        stack.stop()

    # then start stops on its own with EX_CONFIG, the jobs worker not restarted, the reason shown
    assert done.returncode == EX_CONFIG, done.stdout[-3000:]
    assert "cannot be built" in done.stdout
    assert TYPO in done.stdout
    assert "jobs exited with a configuration error (code 78); not restarting it" in done.stdout


def every_other_check_passes(answer: tuple[int, dict[str, Any]] | None) -> bool:
    """Whether a /ready answer shows the VPN, the cloud's Redis and API all well (what else it checks)."""
    if answer is None:
        return False
    body = answer[1]
    return (
        body["vpn_state"] == "ready" and body["redis_healthy"] is True and body["cloud_api_reachable"] is True
    )


def read_since(state: NodeState, last: float | None) -> Callable[[], bool]:
    """Whether the bridge read the stream again since its read at ``last``."""
    return lambda: (state.last_stream_read() or 0.0) > (last or 0.0)


def test_ready_stays_503_while_the_jobs_worker_builds_and_is_200_once_it_built(tmp_path: Path) -> None:
    # given a node whose executor factory holds its build until the test opens a gate
    gate = tmp_path / "gate"
    env = {**gated_env(gate), "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES}
    (tmp_path / "node").mkdir()
    with (
        LocalStack(tmp_path / "node", env=env, web=True) as stack,
        contextlib.closing(stack.broker_redis.client()) as client,
    ):
        state = NodeState(client, stack.qpu_id)
        wait_until(lambda: building(gate), SETTLE_SEC, "the jobs worker to begin its build")

        # when the bridge reads the stream, twice, and the VPN, the cloud's Redis and API are well,
        # while the jobs worker still builds
        answers = []
        for _ in range(2):
            wait_until(read_since(state, state.last_stream_read()), SETTLE_SEC, "a read of the stream")
            answers.append(
                wait_until(
                    lambda: (got := ready(stack)) and every_other_check_passes(got) and got,
                    SETTLE_SEC,
                    "/ready to show every other check passing",
                )
            )
        still_building = ready_jobs_workers(state.client, stack.qpu_id)

        # then /ready is 503 each time, naming the jobs worker
        assert still_building == []
        for status, body in answers:
            assert (status, body["ready"], body.get("reason")) == (503, False, NO_JOBS_WORKER), body

        # when the build finishes
        open_gate(gate)

        # then /ready answers 200, with the jobs worker ready
        wait_until(lambda: (got := ready(stack)) and got[0] == 200, SETTLE_SEC, "/ready to answer 200")
        assert [info.role for info in ready_jobs_workers(state.client, stack.qpu_id)] == ["jobs"]
