"""`coda-bridge start` in the foreground: a killed worker is restarted, and SIGTERM drains a long job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from ops_support import (
    DRAIN_TIMEOUT_SEC,
    FIRST_JOB_SEC,
    circuit,
    executor_runs,
    node_env,
    write_slow_executor,
)

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.pidfile import pid_file_for
from coda_bridge.ops.proctree import alive, process_tree

#: A start whose bridge exits 78 (a refused token) ends by itself within this: 5-11 s on a loaded
#: machine, 33 s with a CPU hog beside it.
REFUSED_START_BOUND_SEC = 60
#: ... and within this of the cloud's refusal (about a second on a quiet machine, docs/operations.md;
#: a busy one stalls a process for seconds).
STOP_AFTER_REFUSAL_SEC = 10


def _pid_of(output: Path, name: str) -> int:
    match = re.search(rf"{name} started \(pid=(\d+)\)", output.read_text())
    assert match, output.read_text()
    return int(match.group(1))


@pytest.mark.e2e
def test_sigterm_during_a_long_job_delivers_it_and_exits_0(cloud_stack: LocalStack, tmp_path: Path) -> None:
    env = node_env(cloud_stack, **write_slow_executor(tmp_path / "executor"))
    output = tmp_path / "start.out"
    with output.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "coda_bridge", "start"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    cloud = cloud_stack.cloud
    try:
        # a worker killed outright is started again, and the log says so
        first = cloud.submit(cloud_stack.qpu_id, circuit(), 10)
        assert cloud.wait_for_result(first, timeout_sec=FIRST_JOB_SEC)["status"] == "completed"
        worker = _pid_of(output, "jobs")  # the supervisor runs it directly, in a group of its own
        os.killpg(worker, signal.SIGKILL)
        restarted = re.compile(
            r"jobs \(pid \d+\) exited with signal SIGKILL .* restarting in 1 s \(restart 1\)"
        )
        wait_until(
            lambda: restarted.search(output.read_text()), 10, "the restart of the jobs worker to be logged"
        )

        # SIGTERM while the (restarted) worker runs a 3 s job
        job = cloud.submit(cloud_stack.qpu_id, circuit(), 10)
        wait_until(lambda: cloud.job(job)["status"].get("state") == "executing", 60, "the job to start")
        tree = process_tree(node.pid)
        signalled = time.monotonic()
        node.send_signal(signal.SIGTERM)
        returncode = node.wait(DRAIN_TIMEOUT_SEC + 10)
        took = time.monotonic() - signalled
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    text = output.read_text()
    assert returncode == 0, text[-3000:]
    assert took < DRAIN_TIMEOUT_SEC, f"stopping took {took:.1f} s"
    result = cloud.result(job)
    assert result is not None, text[-3000:]
    assert result["status"] == "completed"
    assert len(cloud.webhooks(job, accepted=True)) == 1
    assert executor_runs(tmp_path / "executor") == 2  # the first job and this one, never a rerun
    assert "draining" in text
    assert text.index("jobs stopped") < text.index("sending SIGTERM to results")  # executors drain first
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process of the node to be gone")


@pytest.mark.e2e
def test_start_without_a_token_or_credentials_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(CODA_STATE_DIR=str(tmp_path / "state"), CODA_SETTINGS_FILES=str(tmp_path / "none.toml"))
    done = subprocess.run(
        [sys.executable, "-m", "coda_bridge", "start"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78  # EX_CONFIG: a configuration error, not worth a restart (issue 16)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ")
    assert "CODA_NODE_TOKEN" in done.stderr
    assert not pid_file_for(tmp_path / "state").exists()


@pytest.mark.e2e
def test_a_refused_token_stops_start_at_once_without_restarting(cloud_stack: LocalStack) -> None:
    env = node_env(cloud_stack, CODA_NODE_TOKEN="not-a-real-token", CODA_RESULT_PROCESSES="2")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "coda_bridge", "start"], check=False, env=env, capture_output=True, text=True,
        timeout=REFUSED_START_BOUND_SEC + 60,
    )  # fmt: skip
    ended = time.time()
    # (a bridge restarted after its 78 would be restarted for ever: the exit code and the line below
    # prove it was not; this bound says the start ended by itself, a busy machine's start included)
    assert time.monotonic() - started < REFUSED_START_BOUND_SEC
    # and it ended soon after the cloud refused the token (counted from the refusal, not the launch)
    refused_at = max(c["received_at"] for c in cloud_stack.cloud.connects(accepted=False))
    assert ended - refused_at < STOP_AFTER_REFUSAL_SEC
    assert done.returncode == 78, done.stdout
    assert "QPU node token is invalid" in done.stdout
    assert "not restarting" in done.stdout
    assert "not starting jobs, results.1, results.2, control, web" in done.stdout
    assert "not-a-real-token" not in done.stdout + done.stderr


@pytest.mark.e2e
def test_no_process_of_a_node_started_with_token_shows_it_in_its_command_line(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # Given a node started the way the first start is typed: the token on the command line (every
    # part of the shipped layout, two delivery processes, in it)
    env = node_env(cloud_stack, CODA_RESULT_PROCESSES="2")
    token = env.pop("CODA_NODE_TOKEN")
    output = tmp_path / "start.out"
    with output.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "coda_bridge", "start", "--token", token],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # When it has provisioned and every process runs
        wait_until(
            lambda: "web started" in output.read_text() or node.poll() is not None, 60, "the web process"
        )
        wait_until((cloud_stack.state_dir / "coda.config").exists, 60, "the node to provision")
        assert node.poll() is None, output.read_text()[-3000:]
        wait_until(lambda: len(process_tree(node.pid)) >= 8, 30, "the probes app's gunicorn worker")
        tree = process_tree(node.pid)

        # Then no process of its tree has the token in its world-readable command line, nor in the
        # environment it was started with
        leaks = [pid for pid in tree if token.encode() in _cmdline(pid) + _environ(pid)]
        assert leaks == [], [_cmdline(pid) for pid in leaks]
        # And each part was forked from the supervisor, and `ps` shows its own command line
        parts = {
            pid: _cmdline(pid).replace(b"\0", b" ").decode().strip() for pid in tree if _ppid(pid) == node.pid
        }
        shown = sorted(line.split(" -m ", 1)[-1].split(" --threads")[0] for line in parts.values())
        assert shown == [
            "coda_bridge.ops.runners bridge",
            "coda_bridge.ops.runners worker --queues control",
            "coda_bridge.ops.runners worker --queues jobs",
            "coda_bridge.ops.runners worker --queues results",
            "coda_bridge.ops.runners worker --queues results",
            "gunicorn: master [coda-bridge-web]",  # gunicorn names its own processes
        ], parts
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(DRAIN_TIMEOUT_SEC + 10)
    assert token not in output.read_text()


def _ppid(pid: int) -> int:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.e2e
def test_ctrl_c_in_a_terminal_drains_once_and_no_part_sees_the_sigint(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # Given a node started in a terminal (its own session and foreground process group), every part
    # of the shipped layout (two delivery processes) in it
    env = node_env(cloud_stack, CODA_RESULT_PROCESSES="2")
    output = tmp_path / "start.out"
    with output.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "coda_bridge", "start"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "web started" in output.read_text() or node.poll() is not None, 60, "every part")
        wait_until(lambda: output.read_text().count("Worker process is ready") >= 4, 30, "the workers")
        # When Ctrl-C is pressed: the terminal sends SIGINT to the whole foreground process group
        os.killpg(node.pid, signal.SIGINT)
        node.wait(DRAIN_TIMEOUT_SEC + 10)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    text = output.read_text()
    # Then only the supervisor got it: it drained, each part got one SIGTERM and stopped cleanly
    assert node.returncode == 0, text[-3000:]
    assert "SIGINT received; draining" in text
    for name in ("bridge", "jobs", "results.1", "results.2", "control", "web"):
        assert text.count(f"sending SIGTERM to {name} (pid") == 1, name
        assert f"{name} stopped (rc=0)" in text, name
    assert "KeyboardInterrupt" not in text
