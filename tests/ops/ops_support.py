"""Helpers of the operations tests: a node's environment, running the CLI, a slow executor."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pipeline_support import SUITE_RESULT_PROCESSES

from coda_bridge.devtools.stack import LocalStack
from coda_bridge.settings import Settings

#: The drain timeout of these tests' nodes: short, so a broken drain fails fast.
DRAIN_TIMEOUT_SEC = 15
#: How long the slow test executor takes per job.
SLOW_JOB_SEC = 3
#: How long a CLI command may run: more than ``start -d`` waits for the node by default (its start
#: timeout) plus a drain, so a slow start fails as the node's own outcome, not as a test timeout.
CLI_TIMEOUT_SEC = Settings.model_fields["start_timeout_sec"].default + DRAIN_TIMEOUT_SEC + 60
#: How long a node's first job may take, launch to result: the node's start (``start``'s own bound on
#: it, a cold start on a busy machine included), then the job.
FIRST_JOB_SEC = Settings.model_fields["start_timeout_sec"].default + 60


def circuit(num_qubits: int = 1) -> dict[str, Any]:
    return {
        "version": "1.0",
        "target": "cz",
        "num_qubits": num_qubits,
        "gates": [{"gate": "ry", "qubits": [0], "params": [1.0]}],
        "measurements": list(range(num_qubits)),
        "metadata": {"source_hash": "ops-test", "compiled_at": "2026-01-01T00:00:00Z"},
    }


def node_env(stack: LocalStack, **extra: str) -> dict[str, str]:
    """The environment of a node run by the command under test: the stack's, a fresh token, our bin first.

    Deliveries run in one process: a test of the shipped two sets ``CODA_RESULT_PROCESSES`` itself.
    """
    env = stack.env()
    env["CODA_NODE_TOKEN"] = stack.cloud.mint_token(stack.qpu_id)
    env["CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC"] = str(DRAIN_TIMEOUT_SEC)
    env["CODA_RESULT_PROCESSES"] = SUITE_RESULT_PROCESSES
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = CLI_TIMEOUT_SEC
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coda_bridge", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_slow_executor(directory: Path, seconds: float = SLOW_JOB_SEC) -> dict[str, str]:
    """A module with an executor that takes ``seconds`` per job; the env that selects it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "slow_ops_executor.py").write_text(
        textwrap.dedent(
            f"""
            import time

            class SlowExecutor:
                def run(self, ir, shots):
                    with open({str(directory / "runs.log")!r}, "a") as log:
                        log.write("run\\n")
                    time.sleep({seconds})
                    counts = {{"0" * len(ir.measurements): shots}}
                    elapsed_ms = {seconds * 1000}
                    return {{"counts": counts, "execution_time_ms": elapsed_ms, "shots_completed": shots}}

            def create_executor():
                return SlowExecutor()
            """
        )
    )
    return {"PYTHONPATH": str(directory), "CODA_EXECUTOR_FACTORY": "slow_ops_executor:create_executor"}


def executor_runs(directory: Path) -> int:
    """How many runs the slow executor of ``directory`` started."""
    log = directory / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0
