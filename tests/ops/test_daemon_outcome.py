"""`start -d` tells the outcome: ready (exit 0), or failed with its code and one line; `status` keeps why.

Each case runs the real CLI against the local cloud: a token the cloud refuses, an executor factory
that cannot be imported, and a broker Redis that is not there (the node never becomes ready).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from gated_executor import building, gated_env, open_gate
from ops_support import DRAIN_TIMEOUT_SEC, node_env, run_cli

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.daemon import ready_url
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.ops.pidfile import pid_file_for, running_pid
from coda_bridge.ops.proctree import alive, kill_tree, process_tree
from coda_bridge.state.node_state import NodeState

#: The start timeout of these nodes.
START_TIMEOUT_SEC = 20
#: The start timeout of a node whose broker is down: it can never be ready, so this is how long the
#: test waits; long enough for its web app to answer /ready with the reason on a busy machine.
NOT_READY_TIMEOUT_SEC = 12
#: The start timeout of a node that must fail, or be ready, by itself before it: room for a busy
#: machine's start (a failed executor import took 21 s under load, against 9 s on a quiet one).
FAIL_FAST_START_TIMEOUT_SEC = 90
#: What the stop of a node that never became ready may add to the start timeout: its drain timeout,
#: stop's margin and a kill (usually a few seconds; the bound holds on a busy machine).
STOP_SLACK_SEC = DRAIN_TIMEOUT_SEC + 30
SIMULATOR = "coda_bridge.executors.simulator:create_executor"
#: How long the node's parts may take to show a state (seconds).
SETTLE_SEC = 60


def _start_and_status(env: dict[str, str], *mode: str) -> tuple[int, str, float, dict[str, object], int]:
    """``start -d``'s exit code, its stderr, how long it took; then ``status --json`` and its exit code."""
    began = time.monotonic()
    timeout = float(env["CODA_START_TIMEOUT_SEC"]) + STOP_SLACK_SEC + 30
    started = run_cli("start", "-d", *mode, env=env, timeout=timeout)
    took = time.monotonic() - began
    assert started.stdout == ""
    status = run_cli("status", "--json", env=env)
    return started.returncode, started.stderr, took, json.loads(status.stdout), status.returncode


def _one_line(text: str) -> str:
    assert text.endswith("\n")
    assert text.count("\n") == 1, text
    assert "Traceback" not in text
    assert text.startswith("error: ")
    return text.strip()


@pytest.fixture
def env(cloud_stack: LocalStack) -> dict[str, str]:
    timeout = str(START_TIMEOUT_SEC)
    return node_env(cloud_stack, CODA_START_TIMEOUT_SEC=timeout, CODA_EXECUTOR_FACTORY=SIMULATOR)


MODES = pytest.mark.parametrize("mode", [(), ("--one-process",)], ids=["processes", "one-process"])


@pytest.mark.e2e
@MODES
def test_a_refused_token_fails_the_background_start_with_78_and_says_why(
    cloud_stack: LocalStack, env: dict[str, str], mode: tuple[str, ...]
) -> None:
    # Given a node token the cloud does not know
    env["CODA_NODE_TOKEN"] = "cnt_bogus_token_never_minted"
    env["CODA_START_TIMEOUT_SEC"] = str(FAIL_FAST_START_TIMEOUT_SEC)
    # When the node is started in the background
    code, err, took, report, status_code = _start_and_status(env, *mode)
    # Then start fails at once (before its start timeout) with the configuration exit code and the
    # cloud's answer, on one line
    line = _one_line(err)
    assert code == EX_CONFIG
    assert took < FAIL_FAST_START_TIMEOUT_SEC
    assert "bridge exited with code 78" in line or mode
    assert "token is invalid" in line
    assert "cnt_bogus_token_never_minted" not in err
    # And status says the node is stopped, and why
    assert status_code == 3
    assert report["state"] == "stopped"
    assert report["last_exit"]["code"] == EX_CONFIG  # type: ignore[index]
    assert "token is invalid" in report["last_exit"]["reason"]  # type: ignore[index]
    assert not pid_file_for(cloud_stack.state_dir).exists()


@pytest.mark.e2e
@MODES
def test_an_executor_that_cannot_be_built_fails_the_background_start_with_78(
    cloud_stack: LocalStack, env: dict[str, str], mode: tuple[str, ...]
) -> None:
    # Given an executor factory whose module does not exist (a typo)
    env["CODA_EXECUTOR_FACTORY"] = "no_such_backend_module:create_executor"
    env["CODA_START_TIMEOUT_SEC"] = str(FAIL_FAST_START_TIMEOUT_SEC)
    # When the node is started in the background
    code, err, took, report, status_code = _start_and_status(env, *mode)
    # Then start fails with 78 (before its start timeout) and names the factory that cannot be
    # imported, on one line
    line = _one_line(err)
    assert code == EX_CONFIG
    assert took < FAIL_FAST_START_TIMEOUT_SEC
    assert "jobs exited with code 78" in line or mode
    assert "no_such_backend_module" in line
    # And status --json names it, and the executor
    assert status_code == 3
    assert report["last_exit"]["code"] == EX_CONFIG  # type: ignore[index]
    assert "no_such_backend_module" in report["last_exit"]["reason"]  # type: ignore[index]
    assert report["executor"]["factory"] == "no_such_backend_module:create_executor"  # type: ignore[index]


def _ready_body(env: dict[str, str]) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = requests.get(ready_url("127.0.0.1", int(env["CODA_PORT"])), timeout=10).json()
    except (requests.RequestException, ValueError):
        return None
    return body


def _all_else_well(body: dict[str, Any] | None) -> bool:
    """Whether /ready shows the VPN, the cloud's Redis and API well."""
    if body is None:
        return False
    return (
        body["vpn_state"] == "ready" and body["redis_healthy"] is True and body["cloud_api_reachable"] is True
    )


@pytest.mark.e2e
def test_the_background_start_is_not_ready_until_the_jobs_worker_built_its_executor(
    cloud_stack: LocalStack, env: dict[str, str], tmp_path: Path
) -> None:
    # Given an executor whose build waits for a gate the test opens
    gate = tmp_path / "gate"
    env.update(gated_env(gate))
    env["CODA_START_TIMEOUT_SEC"] = str(FAIL_FAST_START_TIMEOUT_SEC)
    timeout = FAIL_FAST_START_TIMEOUT_SEC + STOP_SLACK_SEC + 30
    argv = [sys.executable, "-m", "coda_bridge", "start", "-d"]
    start = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    broker = cloud_stack.broker_redis.client()
    try:
        # When the node runs, the bridge reading the stream, while the jobs worker is in its build
        wait_until(lambda: building(gate), SETTLE_SEC, "the jobs worker to begin its build")
        state, since = NodeState(broker, cloud_stack.qpu_id), time.time()
        wait_until(lambda: (state.last_stream_read() or 0.0) > since, SETTLE_SEC, "a read of the stream")
        body = wait_until(lambda: _all_else_well(got := _ready_body(env)) and got, SETTLE_SEC, "/ready")
        waiting = start.poll() is None
        status = run_cli("status", env=env)
        # Then /ready says the node is not ready, naming the jobs worker, status says the same, and
        # start -d still waits
        assert (body["ready"], body.get("reason")) == (False, "no running jobs worker has a built executor")
        assert "ready:       no: no running jobs worker has a built executor" in status.stdout, status.stdout
        assert waiting, start.communicate()
        # When the build finishes
        open_gate(gate)
        out, err = start.communicate(timeout=timeout)
        # Then start -d says the node is ready, and it is
        assert start.returncode == 0, err
        assert "started in the background and is ready" in out
        assert (_ready_body(env) or {}).get("ready") is True
    finally:
        open_gate(gate)
        if start.poll() is None:
            start.communicate(timeout=timeout)
        stopped = run_cli("stop", env=env, timeout=90)
        broker.close()
    assert stopped.returncode == 0, stopped.stderr


@pytest.mark.e2e
def test_a_node_that_is_not_ready_in_time_is_stopped_and_the_start_fails(
    cloud_stack: LocalStack, env: dict[str, str], tmp_path: Path
) -> None:
    # Given a broker Redis URL where nothing listens
    env["CODA_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["CODA_START_TIMEOUT_SEC"] = str(NOT_READY_TIMEOUT_SEC)
    # When the node is started in the background
    code, err, took, report, status_code = _start_and_status(env)
    # Then start gives up after the start timeout, stops what it started, and says what /ready said
    line = _one_line(err)
    assert code == 1
    assert NOT_READY_TIMEOUT_SEC <= took < NOT_READY_TIMEOUT_SEC + STOP_SLACK_SEC
    assert f"not ready within {NOT_READY_TIMEOUT_SEC} s" in line
    assert "the local broker Redis does not answer" in line
    # And status says it is stopped, and why
    assert status_code == 3
    assert report["state"] == "stopped"
    assert "the local broker Redis does not answer" in report["last_exit"]["reason"]  # type: ignore[index]
    assert not pid_file_for(cloud_stack.state_dir).exists()


@pytest.mark.e2e
def test_a_node_killed_without_a_word_is_not_explained_by_an_older_exit(
    cloud_stack: LocalStack, env: dict[str, str]
) -> None:
    # Given a start that failed (its exit is recorded), then a node that started fine (neither may meet
    # the start timeout: this test is not about it)
    env["CODA_START_TIMEOUT_SEC"] = str(FAIL_FAST_START_TIMEOUT_SEC)
    timeout = FAIL_FAST_START_TIMEOUT_SEC + STOP_SLACK_SEC + 30
    bogus = {**env, "CODA_NODE_TOKEN": "cnt_bogus_token_never_minted"}
    failed = run_cli("start", "-d", env=bogus, timeout=timeout)
    assert failed.returncode == EX_CONFIG, failed.stderr
    started = run_cli("start", "-d", env=env, timeout=timeout)
    assert started.returncode == 0, started.stderr
    pid = running_pid(pid_file_for(cloud_stack.state_dir))
    assert pid is not None
    # When the node is killed with SIGKILL, every process of it at once (as a power cut would)
    kill_tree(process_tree(pid))
    wait_until(lambda: not alive(pid), 10, "the node to be gone")
    # Then status says it stopped with no exit recorded, not the older failure
    status = run_cli("status", env=env)
    assert status.returncode == 3
    assert f"stopped (the run of pid {pid} started at " in status.stdout
    assert "no exit recorded: killed with SIGKILL, or the host went down" in status.stdout
    assert "token is invalid" not in status.stdout
    report = json.loads(run_cli("status", "--json", env=env).stdout)
    assert report["last_exit"]["code"] is None
    assert report["last_exit"]["pid"] == pid
