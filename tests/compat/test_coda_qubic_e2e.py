"""Backends of the first runtime, unchanged, through a whole node against the local cloud simulator.

coda-qubic's qiskit_sim device (a noisy Qiskit Aer simulation) is selected
through ``CODA_EXECUTOR_FACTORY`` and through discovery with
``./site/device.yaml``; an executor shaped as coda-node's README shows goes
the same way.  Every node process runs on the compat interpreter.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from compat_support import (
    RESULT_TIMEOUT_SEC,
    SHOTS,
    CompatStack,
    bell,
    cat_state_problems,
    copy_device,
    flip_second_qubit,
    ghz3,
    illegal_cz_on_cnot,
    node_env,
    ready,
)

from coda_bridge.devtools.stack import wait_until
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.queueing.queues import JOBS_QUEUE
from coda_bridge.queueing.redis_broker import broker_namespace

pytestmark = pytest.mark.e2e

QUBIC_FACTORY = "coda_qubic.executor_factory:create_executor"
#: The qiskit_sim device's directed cnot edges (control, target): a chain Q2->Q1, Q3->Q2.
QUBIC_EDGES = [[1, 0], [2, 1]]
#: How long a jobs worker may take to give up on an executor it cannot build (seconds).
BUILD_GIVE_UP_SEC = 60
#: How long the probes and the bridge may take to show a state (seconds).
SETTLE_SEC = 30


def qubic_stack(workdir: Path, python: Path, **env: str) -> CompatStack:
    """A node for coda-qubic's example device: a 3-qubit QPU with the cnot gate set."""
    workdir.mkdir(parents=True, exist_ok=True)
    return CompatStack(workdir, python=python, native_gate_set="cnot", num_qubits=3, env=node_env(**env))


def submit_cat_states(stack: CompatStack) -> dict[str, dict[str, Any]]:
    """A Bell pair and a 3-qubit GHZ state, their results by name."""
    ids = {
        "bell": stack.cloud.submit(stack.qpu_id, bell(), SHOTS),
        "ghz3": stack.cloud.submit(stack.qpu_id, ghz3(), SHOTS),
    }
    results = stack.cloud.wait_for_results(ids.values(), RESULT_TIMEOUT_SEC)
    return {name: results[job_id] for name, job_id in ids.items()}


def assert_cat_states(results: dict[str, dict[str, Any]]) -> None:
    for name, width in (("bell", 2), ("ghz3", 3)):
        result = results[name]
        assert result["status"] == "completed", result
        assert cat_state_problems(result["counts"], width, SHOTS) == [], (name, result["counts"])


def test_coda_qubic_by_factory_setting_runs_cat_states_and_names_an_illegal_gate(
    compat_python: Path, tmp_path: Path
) -> None:
    # given coda-qubic's qiskit_sim device file, selected through CODA_EXECUTOR_FACTORY
    device = copy_device(tmp_path / "devices", "qiskit_sim.yaml")
    with qubic_stack(
        tmp_path / "node", compat_python, CODA_EXECUTOR_FACTORY=QUBIC_FACTORY, CODA_DEVICE_CONFIG=str(device)
    ) as stack:
        # when a Bell pair, a GHZ state and a circuit with a gate illegal for its target are submitted
        illegal = stack.cloud.submit(stack.qpu_id, ir_json=json.dumps(illegal_cz_on_cnot()), shots=10)
        results = submit_cat_states(stack)
        failed = stack.cloud.wait_for_result(illegal, RESULT_TIMEOUT_SEC)

        # then the cat states come back with noisy but statistically right counts
        assert_cat_states(results)
        # and the illegal circuit fails naming the gate, its index and the target
        assert failed["status"] == "failed", failed
        assert "Gate 'cz' not legal for target 'cnot' at index 0" in failed["error"]
        # and the executor was recognised as coda-node's, its device edges reaching the cloud's record
        assert "written for coda-node" in stack.log_tail("jobs", 400)
        wait_until(
            lambda: stack.cloud.qpu(stack.qpu_id).get("connectivity") == QUBIC_EDGES,
            SETTLE_SEC,
            "the device's directed edges in the cloud's QPU record",
        )


def test_coda_qubic_found_by_discovery_with_a_site_device_yaml(
    compat_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given no executor setting at all, and coda-qubic's qiskit_sim file as ./site/device.yaml
    workdir = tmp_path / "node"
    copy_device(workdir / "site")
    monkeypatch.chdir(workdir)
    with qubic_stack(workdir, compat_python) as stack:
        # when a Bell pair and a GHZ state are submitted
        results = submit_cat_states(stack)

        # then the discovered coda-qubic read ./site/device.yaml and ran them
        assert_cat_states(results)
        assert "discovered package coda_qubic" in stack.log_tail("jobs", 400)


def test_an_executor_written_as_the_first_runtimes_readme_shows_runs_through_the_node(
    compat_python: Path, tmp_path: Path
) -> None:
    # given an executor shaped as coda-node's README example (async run, coda-node's ExecutionResult)
    (tmp_path / "node").mkdir()
    env = node_env(CODA_EXECUTOR_FACTORY="first_runtime_example:create_executor")
    with CompatStack(tmp_path / "node", python=compat_python, env=env) as stack:
        # when a circuit flipping qubit 1 is submitted
        job_id = stack.cloud.submit(stack.qpu_id, flip_second_qubit(), 100)
        result = stack.cloud.wait_for_result(job_id, RESULT_TIMEOUT_SEC)

        # then it ran on coda-node's own NativeGateIR (it fails the job otherwise) and answered "01"
        assert result["status"] == "completed", result
        assert result["counts"] == {"01": 100}
        assert result["shots_completed"] == 100


def test_a_typo_in_the_device_file_leaves_jobs_waiting_until_it_is_fixed(
    compat_python: Path, tmp_path: Path
) -> None:
    # given coda-qubic selected with a device file whose runner_mode has a typo, and a job submitted
    devices = tmp_path / "devices"
    device = copy_device(devices, replace={"runner_mode: qiskit_sim": "runner_mode: qiskit_simm"})
    stack = qubic_stack(
        tmp_path / "node", compat_python, CODA_EXECUTOR_FACTORY=QUBIC_FACTORY, CODA_DEVICE_CONFIG=str(device)
    )
    stack.web = True
    with stack:
        job_id = stack.cloud.submit(stack.qpu_id, bell(), SHOTS)

        # when the jobs worker tries to build its executor
        jobs = stack.children["jobs"]
        wait_until(lambda: not jobs.alive(), BUILD_GIVE_UP_SEC, "the jobs worker to give up")

        # then it exits with EX_CONFIG, having said why in one line
        assert jobs.process.returncode == EX_CONFIG
        reasons = [line for line in stack.log_tail("jobs", 400).splitlines() if "cannot be built" in line]
        assert len(reasons) == 1, reasons
        assert "Invalid device config" in reasons[0]
        # and /ready answers 503 naming the executor factory
        answer = wait_until(
            lambda: (got := ready(stack)) and "executor" in got[1].get("reason", "") and got,
            SETTLE_SEC,
            "/ready to name the executor",
        )
        assert answer[0] == 503
        assert f"executor factory {QUBIC_FACTORY} raised" in answer[1]["reason"]
        # and the job waits in the node's queue, neither failed nor answered
        queue_key = f"{broker_namespace(stack.qpu_id)}:{JOBS_QUEUE}"
        broker = stack.broker_redis.client()
        wait_until(lambda: broker.llen(queue_key) == 1, SETTLE_SEC, "the job to wait in the jobs queue")
        assert stack.cloud.result(job_id) is None
        state = stack.cloud_redis.client().hget(f"qpu:job:{job_id}:status", "state")
        assert state is None or state.decode() not in ("completed", "failed", "cancelled")
        # and doctor, run where the backend is installed, says which file to fix
        doctor = subprocess.run(
            [str(compat_python), "-m", "coda_bridge", "doctor"],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert doctor.returncode == 1
        assert "FIX: executor worker: the jobs worker stopped" in doctor.stdout
        assert f"fix the device config {device}" in doctor.stdout

        # when the typo is fixed and the jobs worker started again
        copy_device(devices)
        stack.start_process("jobs")

        # then the job that waited completes, and /ready answers 200 again
        result = stack.cloud.wait_for_result(job_id, RESULT_TIMEOUT_SEC)
        assert result["status"] == "completed", result
        assert cat_state_problems(result["counts"], 2, SHOTS) == []
        wait_until(lambda: (got := ready(stack)) and got[0] == 200, SETTLE_SEC, "/ready to answer 200")
