"""The log of `start -d` survives the host: SIGHUP reopens it, a full disk only pauses it (issue 23, item 5).

A real node under `start --daemon` against a local cloud; logrotate itself when installed; a tiny tmpfs
for the full filesystem (root only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from ops_support import circuit, node_env, run_cli

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.ops.daemon import ready_url
from coda_bridge.ops.pidfile import pid_file_for, running_pid

#: The snippet shipped for logrotate.
SNIPPET = Path(__file__).resolve().parents[2] / "deploy" / "logrotate" / "coda-bridge"
#: Size of the tmpfs the log fills.
TMPFS_SIZE = "256k"
#: How long a job of these tests may take, start to result.
JOB_WAIT_SEC = 60


@pytest.fixture
def daemon(cloud_stack: LocalStack) -> Iterator[tuple[dict[str, str], int]]:
    """A node started with `start -d`: its environment and the supervisor's pid; stopped at the end."""
    env = node_env(cloud_stack, CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor")
    started = run_cli("start", "-d", env=env)
    assert started.returncode == 0, started.stderr
    pid = running_pid(pid_file_for(cloud_stack.state_dir))
    assert pid is not None
    try:
        yield env, pid
    finally:
        stopped = run_cli("stop", env=env, timeout=90)
        assert stopped.returncode == 0, stopped.stderr


def ready(env: dict[str, str]) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(ready_url("127.0.0.1", int(env["CODA_PORT"])), timeout=5).status_code == 200
    return False


def run_a_job(stack: LocalStack) -> None:
    job_id = stack.cloud.submit(stack.qpu_id, circuit(2), 100)
    assert stack.cloud.wait_for_result(job_id, timeout_sec=JOB_WAIT_SEC)["status"] == "completed"


@pytest.mark.e2e
def test_sighup_never_stops_the_node_and_reopens_its_log_after_a_rename(
    cloud_stack: LocalStack, daemon: tuple[dict[str, str], int]
) -> None:
    env, pid = daemon
    log = StatePaths(cloud_stack.state_dir).daemon_log
    # given a node started with -d
    # when it gets a SIGHUP with its log where it was
    os.kill(pid, signal.SIGHUP)
    # then it says so, and goes on (ready, same pid, jobs run)
    wait_until(lambda: "SIGHUP received: log reopened" in log.read_text(), 10, "the reopen line")
    assert running_pid(pid_file_for(cloud_stack.state_dir)) == pid
    assert ready(env)
    run_a_job(cloud_stack)
    # when the log is renamed (logrotate's create) and the node gets a SIGHUP
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    os.kill(pid, signal.SIGHUP)
    # then new lines go to a new file at the log's path, owner-only, and the renamed one gets no more
    wait_until(lambda: log.exists() and "log reopened" in log.read_text(), 10, "a new log file")
    assert log.stat().st_mode & 0o777 == 0o600
    size = rotated.stat().st_size
    run_a_job(cloud_stack)
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: log.read_text().count("log reopened") == 2, 10, "a line after a job")
    assert rotated.stat().st_size == size
    assert "Ignoring unknown setting" not in log.read_text() + rotated.read_text()
    assert running_pid(pid_file_for(cloud_stack.state_dir)) == pid
    assert ready(env)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_the_shipped_logrotate_snippet_rotates_the_log_of_a_running_node(
    cloud_stack: LocalStack, daemon: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, pid = daemon
    log = StatePaths(cloud_stack.state_dir).daemon_log
    # given the shipped snippet, pointed at this node's state directory, run as this user
    config = tmp_path / "logrotate.conf"
    text = SNIPPET.read_text().replace("/var/lib/coda-bridge", str(cloud_stack.state_dir))
    text = text.replace("runuser -u coda-bridge -- ", "").replace("coda-bridge coda-bridge", "root root")
    config.write_text(text)
    config.chmod(0o600)
    # when logrotate forces a rotation
    rotation = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "state"), str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then the old log is kept aside, the node writes a new one, and it still runs
    assert rotation.returncode == 0, rotation.stderr
    assert log.with_name(log.name + ".1").exists()
    wait_until(lambda: log.exists() and "log reopened" in log.read_text(), 10, "the node to reopen its log")
    assert running_pid(pid_file_for(cloud_stack.state_dir)) == pid
    run_a_job(cloud_stack)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted at the end (skipped where mounting is not permitted)."""
    mount_point = tmp_path / "logfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """A file that takes every free byte of ``directory``'s filesystem."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def write_talking_executor(directory: Path) -> dict[str, str]:
    """A module with an executor that prints a long line per job (``ran job N``); the env that selects it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "talking_executor.py").write_text(
        textwrap.dedent(
            """
            import itertools

            _runs = itertools.count(1)

            class TalkingExecutor:
                def run(self, ir, shots):
                    print(f"ran job {next(_runs)} " + "x" * 2000, flush=True)
                    counts = {"0" * len(ir.measurements): shots}
                    return {"counts": counts, "execution_time_ms": 1.0, "shots_completed": shots}

            def create_executor():
                return TalkingExecutor()
            """
        )
    )
    return {"PYTHONPATH": str(directory), "CODA_EXECUTOR_FACTORY": "talking_executor:create_executor"}


@pytest.mark.e2e
def test_logging_resumes_once_the_full_filesystem_of_the_log_has_space_again(
    cloud_stack: LocalStack, tiny_tmpfs: Path, tmp_path: Path
) -> None:
    # given the log of `start -d` on a tiny filesystem (the state directory's log links there)
    log = StatePaths(cloud_stack.state_dir).daemon_log
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.symlink_to(tiny_tmpfs / "coda-bridge.log")
    env = node_env(cloud_stack, **write_talking_executor(tmp_path / "executor"))
    started = run_cli("start", "-d", env=env)
    assert started.returncode == 0, started.stderr
    pid = running_pid(pid_file_for(cloud_stack.state_dir))
    try:
        # when the filesystem fills up while jobs run (their lines cannot be written)
        filler = fill(tiny_tmpfs)
        for _ in range(3):
            run_a_job(cloud_stack)
        # and space is freed again, and one more job runs
        filler.unlink()
        run_a_job(cloud_stack)
        # then the log resumes: every job's line is there, those that waited too, and the node never stopped
        wait_until(lambda: "ran job 4 " in log.read_text(), 20, "the log to resume")
        assert all(f"ran job {n} " in log.read_text() for n in (1, 2, 3))
        assert running_pid(pid_file_for(cloud_stack.state_dir)) == pid
        assert ready(env)
    finally:
        stopped = run_cli("stop", env=env, timeout=90)
        assert stopped.returncode == 0, stopped.stderr


@pytest.fixture
def one_process_daemon(cloud_stack: LocalStack) -> Iterator[tuple[dict[str, str], int]]:
    """A node started with `start -d --one-process`: its environment and its pid; stopped at the end."""
    env = node_env(cloud_stack, CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor")
    started = run_cli("start", "-d", "--one-process", env=env)
    assert started.returncode == 0, started.stderr
    pid = running_pid(pid_file_for(cloud_stack.state_dir))
    assert pid is not None
    try:
        yield env, pid
    finally:
        stopped = run_cli("stop", env=env, timeout=90)
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.e2e
def test_sighup_under_one_process_reopens_the_log_and_never_stops_the_node(
    cloud_stack: LocalStack, one_process_daemon: tuple[dict[str, str], int]
) -> None:
    env, pid = one_process_daemon
    log = StatePaths(cloud_stack.state_dir).daemon_log
    # given a node started with -d --one-process, ready
    wait_until(lambda: ready(env), 60, "the node to be ready")
    # when its log is renamed (logrotate's create) and it gets a SIGHUP
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    os.kill(pid, signal.SIGHUP)
    # then it writes a new file at the log's path, owner-only, and goes on: same pid, ready, jobs run
    wait_until(lambda: log.exists() and "SIGHUP received: log reopened" in log.read_text(), 10, "a new log")
    assert log.stat().st_mode & 0o777 == 0o600
    size = rotated.stat().st_size
    run_a_job(cloud_stack)
    assert "draining" not in log.read_text() + rotated.read_text()
    assert running_pid(pid_file_for(cloud_stack.state_dir)) == pid
    assert ready(env)
    assert rotated.stat().st_size == size, "the renamed file gets no more lines"
