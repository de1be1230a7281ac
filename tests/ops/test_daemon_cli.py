"""`start --daemon`, `status`, `logs -n 5`, a refused second start, and `stop`, against a local cloud."""

from __future__ import annotations

from pathlib import Path

import pytest
from ops_support import circuit, node_env, run_cli

from coda_bridge.dev.stack import LocalStack, wait_until
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.ops.proctree import alive, process_tree


@pytest.mark.e2e
def test_daemon_start_status_logs_second_start_and_stop(cloud_stack: LocalStack, tmp_path: Path) -> None:
    env = node_env(cloud_stack, CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor")
    paths = StatePaths(cloud_stack.state_dir)

    started = run_cli("start", "--daemon", env=env)
    assert started.returncode == 0, started.stderr
    assert "started in the background" in started.stdout
    pid = int(paths.daemon_pid.read_text())
    assert f"pid {pid}" in started.stdout
    assert env["CODA_NODE_TOKEN"] not in started.stdout + started.stderr
    try:
        again = run_cli("start", "-d", env=env)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines() == [again.stderr.strip()]  # one line
        assert f"already running (pid {pid}" in again.stderr
        assert "Traceback" not in again.stderr

        job_id = cloud_stack.cloud.submit(cloud_stack.qpu_id, circuit(2), 100)
        result = cloud_stack.cloud.wait_for_result(job_id, timeout_sec=60)
        assert result["status"] == "completed"
        assert sum(result["counts"].values()) == 100

        status = run_cli("status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"running (pid {pid})" in status.stdout
        assert cloud_stack.qpu_id in status.stdout
        assert "jobs 0" in status.stdout
        assert str(paths.daemon_log) in status.stdout
        assert "vpn:         not required" in status.stdout

        logs = run_cli("logs", "-n", "5", env=env)
        assert logs.returncode == 0, logs.stderr
        assert len(logs.stdout.splitlines()) == 5
        log_text = paths.daemon_log.read_text()
        assert "bridge started" in log_text
        assert env["CODA_NODE_TOKEN"] not in log_text

        tree = process_tree(pid)
        assert len(tree) >= 6  # the supervisor and its processes (one per part, gunicorn's worker too)
    finally:
        stopped = run_cli("stop", env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert f"(pid {pid}) stopped" in stopped.stdout
    assert not paths.daemon_pid.exists()
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process of the node to be gone")

    after = run_cli("status", env=env)
    assert after.returncode == 3
    assert "coda-bridge: stopped" in after.stdout
    assert "not running" in run_cli("stop", env=env).stdout
