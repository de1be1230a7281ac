"""`start --daemon`, `status`, `logs -n 5`, a refused second start, and `stop`, against a local cloud."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from ops_support import circuit, node_env, run_cli

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.ops.daemon import ready_url
from coda_bridge.ops.pidfile import pid_file_for, running_pid
from coda_bridge.ops.proctree import alive, process_tree


@pytest.mark.e2e
def test_daemon_start_status_logs_second_start_and_stop(cloud_stack: LocalStack, tmp_path: Path) -> None:
    env = node_env(cloud_stack, CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor")
    env["CODA_DEVCLOUD_URL"] = cloud_stack.env()["CODA_WEBAPP_URL"]  # this project's own: no warning
    paths = StatePaths(cloud_stack.state_dir)
    pid_file = pid_file_for(cloud_stack.state_dir)

    started = run_cli("start", "--daemon", env=env)
    assert started.returncode == 0, started.stderr
    assert "started in the background and is ready" in started.stdout
    pid = running_pid(pid_file)
    assert pid is not None
    assert f"pid {pid}" in started.stdout
    # ready means ready: /ready answers 200 the moment `start -d` returns
    assert requests.get(ready_url("127.0.0.1", int(env["CODA_PORT"])), timeout=5).status_code == 200
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
        assert "ready:       yes" in status.stdout
        assert "executor:    coda_bridge.executors.simulator:create_executor" in status.stdout
        assert "dead letters: none" in status.stdout
        report = json.loads(run_cli("status", "--json", env=env).stdout)
        assert report["state"] == "running"
        assert report["pid"] == pid
        assert report["ready"] == {"ready": True, "reason": None}
        assert report["heartbeat_age_sec"] is not None
        assert report["heartbeat_age_sec"] < 60
        assert report["dead_letters"]["results"] == 0

        logs = run_cli("logs", "-n", "5", env=env)
        assert logs.returncode == 0, logs.stderr
        assert len(logs.stdout.splitlines()) == 5
        log_text = paths.daemon_log.read_text()
        assert "bridge started" in log_text
        assert env["CODA_NODE_TOKEN"] not in log_text
        assert "Ignoring unknown setting" not in log_text

        tree = process_tree(pid)
        assert len(tree) >= 6  # the supervisor and its processes (one per part, gunicorn's worker too)
    finally:
        stopped = run_cli("stop", env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert f"(pid {pid}) stopped" in stopped.stdout
    assert not pid_file.exists()
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process of the node to be gone")

    after = run_cli("status", env=env)
    assert after.returncode == 3
    assert "coda-bridge: stopped (last exit: code 0 at " in after.stdout
    assert "SIGTERM received" in after.stdout
    assert "not running" in run_cli("stop", env=env).stdout
