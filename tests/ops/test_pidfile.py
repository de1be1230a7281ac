"""The pid file: held while running, refused when a node runs, replaced when stale; log tail and follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coda_bridge.ops.daemon import DaemonRunning, claim_pid_file, follow, running_pid, stop_node, tail


def test_the_pid_file_holds_our_pid_while_claimed_and_goes_afterwards(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    with claim_pid_file(pid_file) as pid:
        assert pid == os.getpid()
        assert pid_file.read_text().strip() == str(os.getpid())
        assert oct(pid_file.stat().st_mode & 0o777) == oct(0o600)
    assert not pid_file.exists()


def test_a_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True, text=True
    )
    pid_file.write_text(gone.stdout)
    assert running_pid(pid_file) is None
    with claim_pid_file(pid_file):
        assert pid_file.read_text().strip() == str(os.getpid())


def test_a_running_node_is_refused_by_pid(tmp_path: Path) -> None:
    pid_file = tmp_path / "coda-bridge.pid"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "coda-bridge-test"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        assert running_pid(pid_file) == other.pid
        with (
            pytest.raises(DaemonRunning, match=f"already running \\(pid {other.pid}"),
            claim_pid_file(pid_file),
        ):
            pass
        assert pid_file.read_text().strip() == str(other.pid)  # not taken over
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
