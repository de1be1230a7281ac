"""`start --one-process` (and the default `start`) against a local cloud: idle stop, drain, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from ops_support import (
    DRAIN_TIMEOUT_SEC,
    FIRST_JOB_SEC,
    circuit,
    executor_runs,
    node_env,
    run_cli,
    write_slow_executor,
)

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.pidfile import pid_file_for, running_pid
from coda_bridge.ops.proctree import alive, process_tree

#: A generous bound on an idle stop (the real figure, well under a second, comes from bench/footprint.py).
IDLE_STOP_BOUND_SEC = 10
#: How long a node may take to answer /ready 200 in these tests.
READY_TIMEOUT_SEC = 60


def _start(env: dict[str, str], output: Path, *extra: str) -> subprocess.Popen[bytes]:
    with output.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "coda_bridge", "start", *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _ready(stack: LocalStack, node: subprocess.Popen[bytes], output: Path) -> None:
    url = f"http://127.0.0.1:{stack.web_port}/ready"

    def answered() -> bool:
        assert node.poll() is None, output.read_text()[-3000:]
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(answered, READY_TIMEOUT_SEC, "/ready to answer 200")


def _stop(node: subprocess.Popen[bytes], timeout_sec: float) -> tuple[int, float]:
    signalled = time.monotonic()
    node.send_signal(signal.SIGTERM)
    returncode = node.wait(timeout_sec)
    return returncode, time.monotonic() - signalled


def _kill(node: subprocess.Popen[bytes]) -> None:
    if node.poll() is None:
        node.kill()
        node.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [(), ("--one-process",)], ids=["processes", "one-process"])
def test_an_idle_node_exits_0_soon_after_sigterm(
    cloud_stack: LocalStack, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    # Given a node that answers /ready and has nothing to do
    output = tmp_path / "start.out"
    node = _start(node_env(cloud_stack), output, *mode)
    try:
        _ready(cloud_stack, node, output)
        tree = process_tree(node.pid)

        # When it gets SIGTERM
        returncode, took = _stop(node, IDLE_STOP_BOUND_SEC)
    finally:
        _kill(node)

    # Then it exits 0, and every process of it is gone
    print(f"idle stop ({' '.join(mode) or 'processes'}): {took:.2f} s")
    assert returncode == 0, output.read_text()[-3000:]
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process of the node to be gone")
    if mode:
        assert tree == [node.pid], "one process: no children"


@pytest.mark.e2e
def test_one_process_sigterm_during_a_long_job_delivers_it_and_exits_0(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # Given a one-process node running a 3 s job
    env = node_env(cloud_stack, **write_slow_executor(tmp_path / "executor"))
    output = tmp_path / "start.out"
    node = _start(env, output, "--one-process")
    cloud = cloud_stack.cloud
    try:
        job = cloud.submit(cloud_stack.qpu_id, circuit(), 10)
        wait_until(
            lambda: cloud.job(job)["status"].get("state") == "executing", FIRST_JOB_SEC, "the job to start"
        )

        # When it gets SIGTERM mid-job
        returncode, took = _stop(node, DRAIN_TIMEOUT_SEC + 10)
    finally:
        _kill(node)

    # Then the job finishes and is delivered once, within the drain timeout, and the exit is 0
    text = output.read_text()
    assert returncode == 0, text[-3000:]
    assert took < DRAIN_TIMEOUT_SEC, f"stopping took {took:.1f} s"
    result = cloud.result(job)
    assert result is not None, text[-3000:]
    assert result["status"] == "completed"
    assert len(cloud.webhooks(job, accepted=True)) == 1
    assert executor_runs(tmp_path / "executor") == 1
    assert text.index("draining") < text.index("jobs stopped")


@pytest.mark.e2e
@pytest.mark.fault
def test_one_process_killed_mid_run_and_started_again_delivers_every_job_exactly_once(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # Given a one-process node with short leases, working through jobs of 1 s each
    env = node_env(
        cloud_stack,
        **write_slow_executor(tmp_path / "executor", seconds=1.0),
        CODA_WORKER_HEARTBEAT_TIMEOUT_SEC="5",
        CODA_CLAIM_IDLE_SEC="5",
        CODA_CLAIM_LEASE_SEC="3",
    )
    output = tmp_path / "start.out"
    node = _start(env, output, "--one-process")
    cloud = cloud_stack.cloud
    try:
        # (one done, one running, the rest waiting when the kill comes)
        jobs = [cloud.submit(cloud_stack.qpu_id, circuit(), 10) for _ in range(5)]
        wait_until(lambda: cloud.result(jobs[0]) is not None, FIRST_JOB_SEC, "the first result")
        wait_until(
            lambda: any(cloud.job(j)["status"].get("state") == "executing" for j in jobs[1:]),
            30,
            "a later job to be running",
        )

        # When the process is killed outright mid-run, and started again (a reconnect)
        os.kill(node.pid, signal.SIGKILL)
        node.wait(10)
        env.pop("CODA_NODE_TOKEN")
        node = _start(env, output, "--one-process")

        # Then every job ends with exactly one accepted delivery
        wait_until(lambda: all(cloud.result(j) is not None for j in jobs), 120, "every result")
        returncode, _ = _stop(node, DRAIN_TIMEOUT_SEC + 10)
    finally:
        _kill(node)
    assert returncode == 0, output.read_text()[-3000:]
    assert [len(cloud.webhooks(j, accepted=True)) for j in jobs] == [1] * len(jobs)
    assert all(cloud.result(j)["status"] == "completed" for j in jobs)  # type: ignore[index]


@pytest.mark.e2e
def test_one_process_in_the_background_runs_jobs_and_stop_drains_it(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # Given a one-process node started in the background
    env = node_env(cloud_stack, CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor")
    started = run_cli("start", "--daemon", "--one-process", env=env)
    assert started.returncode == 0, started.stderr
    pid = running_pid(pid_file_for(cloud_stack.state_dir))
    assert pid is not None
    try:
        # When a job comes
        job = cloud_stack.cloud.submit(cloud_stack.qpu_id, circuit(2), 100)

        # Then it is run, and the whole node is that one process and the child that runs its executor
        assert cloud_stack.cloud.wait_for_result(job, timeout_sec=60)["status"] == "completed"
        tree = process_tree(pid)
        assert tree[0] == pid and len(tree) == 2, tree
        # and `status` lists every part of it, not only the bridge
        status = run_cli("status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"bridge  pid {pid} " in status.stdout
        assert f"node    pid {pid} " in status.stdout  # the three queues' workers
        assert f"web     pid {pid} " in status.stdout
    finally:
        stopped = run_cli("stop", env=env, timeout=90)

    # And `stop` drains it and removes the pid file
    assert stopped.returncode == 0, stopped.stderr
    assert f"(pid {pid}) stopped" in stopped.stdout
    assert not pid_file_for(cloud_stack.state_dir).exists()
    assert not alive(pid)
    wait_until(lambda: not any(alive(p) for p in tree), 10, "the executor's child to be gone")
