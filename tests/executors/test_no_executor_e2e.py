"""No executor configured or discovered: the node refuses to start, and the no-op executor runs only by name.

Real processes: ``coda-bridge start`` against the local cloud simulator.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import LocalStack
from coda_bridge.ops.exits import EX_CONFIG

pytestmark = pytest.mark.e2e

#: Longest a refused start may take (seconds): it refuses before starting any process.
REFUSAL_TIMEOUT_SEC = 60


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalStack]:
    """Both Redis servers and the simulator with the QPU registered; no node processes, no executor named."""
    (tmp_path / "node").mkdir()
    stack = LocalStack(tmp_path / "node")
    try:
        stack.start(processes=False)
        yield stack
    finally:
        stack.stop()


def _start(stack: LocalStack, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = stack.env()
    env.pop("CODA_EXECUTOR_FACTORY", None)
    env["CODA_NODE_TOKEN"] = stack.cloud.mint_token(stack.qpu_id)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "coda_bridge", "start"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_SEC,
        check=False,
    )


def test_start_without_an_executor_refuses_in_one_line_before_connecting(
    cloud: LocalStack, tmp_path: Path
) -> None:
    # given a registered QPU, a fresh token, and no executor setting, device file or backend package
    # when the node is started
    done = _start(cloud, tmp_path)

    # then it refuses with EX_CONFIG and one line saying how to set an executor, no traceback
    assert done.returncode == EX_CONFIG, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: no executor is configured")
    assert "set CODA_EXECUTOR_FACTORY=" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    # and it never answered as a node: the token was not used, no heartbeat reached the cloud
    qpu = cloud.cloud.qpu(cloud.qpu_id)
    assert qpu["provisioned"] is False
    assert qpu["last_heartbeat_at"] is None


def test_a_misspelt_executor_variable_is_refused_like_none(cloud: LocalStack, tmp_path: Path) -> None:
    # given the executor variable misspelt, so no executor is configured
    # when the node is started
    done = _start(cloud, tmp_path, CODA_EXECUTOR_FACTRY="coda_bridge.executors.simulator:create_executor")

    # then it refuses with EX_CONFIG instead of answering jobs with the no-op executor's zeros
    assert done.returncode == EX_CONFIG, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no executor is configured" in done.stderr
    assert cloud.cloud.qpu(cloud.qpu_id)["last_heartbeat_at"] is None
