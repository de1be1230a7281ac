"""The pid file: held while running, refused when a node runs, replaced when stale; log tail and follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ops_support import node_env, run_cli

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.identity.credentials import ensure_state_dir
from coda_bridge.ops.daemon import follow, stop_node, tail
from coda_bridge.ops.pidfile import (
    DaemonRunning,
    claim_pid_file,
    pid_file_for,
    running_pid,
    runtime_dir,
)
from coda_bridge.ops.proctree import alive, descendants, kill_tree, process_tree


def test_the_pid_file_holds_our_pid_while_claimed_and_goes_afterwards(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    with claim_pid_file(pid_file) as pid:
        assert pid == os.getpid()
        assert json.loads(pid_file.read_text())["pid"] == os.getpid()
        assert running_pid(pid_file) == os.getpid()
        assert oct(pid_file.stat().st_mode & 0o777) == oct(0o600)
    assert not pid_file.exists()


def test_the_pid_file_lives_in_a_private_runtime_directory_one_per_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a user with a runtime directory (root uses /run, emptied at boot too)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    # When two state directories ask for their pid files
    first, second = pid_file_for(tmp_path / "a"), pid_file_for(tmp_path / "b")
    # Then each has its own, in a directory only this user can write to, outside the state directory
    assert first != second
    assert first.parent == second.parent == runtime_dir()
    expected = Path("/run/coda-bridge") if os.geteuid() == 0 else tmp_path / "run" / "coda-bridge"
    assert runtime_dir() == expected
    assert runtime_dir().stat().st_mode & 0o022 == 0


def test_a_runtime_directory_others_can_write_to_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("coda_bridge.ops.pidfile.ROOT_RUNTIME_PARENT", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run" / "coda-bridge").mkdir(parents=True)
    (tmp_path / "run" / "coda-bridge").chmod(0o777)
    with pytest.raises(Exception, match="only it can write to"):
        runtime_dir()


def test_a_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True, text=True
    )
    pid_file.write_text(gone.stdout)
    assert running_pid(pid_file) is None
    with claim_pid_file(pid_file):
        assert json.loads(pid_file.read_text())["pid"] == os.getpid()


def test_a_running_node_is_refused_by_pid(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    holder = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from coda_bridge.ops.pidfile import claim_pid_file
        with claim_pid_file(Path({str(pid_file)!r})):
            print("held", flush=True)
            time.sleep(30)
        """
    )
    other = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "held"
        assert running_pid(pid_file) == other.pid
        with (
            pytest.raises(DaemonRunning, match=f"already running \\(pid {other.pid}"),
            claim_pid_file(pid_file),
        ):
            pass
        assert json.loads(pid_file.read_text())["pid"] == other.pid  # not taken over
        outcome = stop_node(pid_file, drain_timeout_sec=1)
        assert outcome.pid == other.pid
        assert other.wait(5) is not None
        assert not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_process_that_is_not_coda_bridge_is_not_ours(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    other = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        assert running_pid(pid_file) is None  # a reused pid: never signalled
        assert stop_node(pid_file, drain_timeout_sec=1).pid is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.e2e
def test_a_stale_pid_file_naming_a_live_coda_stranger_is_not_the_node(cloud_stack: LocalStack) -> None:
    # Given a live process of someone else whose command line says "coda", with a child of its own,
    # and pid files naming it: where earlier versions kept theirs (a bare pid in the state directory),
    # and where this one does, written before a reboot (the pid was another process's then)
    env = node_env(cloud_stack, CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor")
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '120'])", "my-coda-notebook"]
    )
    pid_file = pid_file_for(cloud_stack.state_dir)
    try:
        child = wait_until(lambda: descendants(stranger.pid), 10, "the stranger's child")[0]
        ensure_state_dir(cloud_stack.state_dir)
        (cloud_stack.state_dir / "coda-bridge.pid").write_text(f"{stranger.pid}\n")
        pid_file.write_text(json.dumps({"pid": stranger.pid, "identity": "an-earlier-boot-4242"}))

        # When status, stop and start look at it
        status = run_cli("status", env=env)
        stop = run_cli("stop", env=env)
        start = run_cli("start", "-d", env=env)
        try:
            # Then status did not call the node running, stop signalled nobody, start was not blocked
            assert status.returncode == 3, status.stdout
            assert f"pid {stranger.pid}" not in status.stdout
            assert "coda-bridge is not running" in stop.stdout
            assert stranger.poll() is None
            assert alive(child)
            assert start.returncode == 0, start.stderr
            assert "already running" not in start.stderr
            assert running_pid(pid_file) not in (None, stranger.pid)
        finally:
            run_cli("stop", env=env, timeout=90)
        assert stranger.poll() is None  # nor did the real node's stop touch it
        assert alive(child)
    finally:
        kill_tree(process_tree(stranger.pid))
        stranger.wait()


def test_tail_and_follow_read_the_end_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "coda-bridge.log"
    log.write_text("".join(f"line {i}\n" for i in range(20_000)))
    assert tail(log, 3) == ["line 19997", "line 19998", "line 19999"]
    assert tail(tmp_path / "missing.log", 3) == []
    lines = follow(log, poll_sec=0.01)
    with log.open("a") as handle:
        handle.write("new one\nand another\n")
    assert next(lines) == "new one"
    assert next(lines) == "and another"
