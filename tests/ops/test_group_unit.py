"""The process group's bookkeeping, with stand-ins for its processes: tokens, signals, errors."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from honcho.printer import Printer

from coda_bridge.ops.group import ProcessGroup
from coda_bridge.ops.members import ForkedProcess
from coda_bridge.ops.process_list import ProcessSpec


def test_a_spent_token_is_gone_from_every_environment_once_the_node_has_an_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a group whose bridge was started with a one-time token, and a worker still waiting
    identity = {"ready": False}
    group = ProcessGroup(
        drain_timeout_sec=1, identity_ready=lambda: identity["ready"], spent_env=("CODA_NODE_TOKEN",)
    )
    spawned: list[dict[str, Any]] = []
    monkeypatch.setattr(group, "_spawn", lambda member: spawned.append(dict(member.env)))
    group.add(ProcessSpec("bridge", ("bridge",)), {"CODA_NODE_TOKEN": "one-time", "KEEP": "1"})
    group.add(ProcessSpec("jobs", ("jobs",)), {"CODA_NODE_TOKEN": "one-time", "KEEP": "1"}, deferred=True)

    # When the identity is not there yet, nothing changes and nothing starts
    group._start_deferred()
    assert spawned == []

    # When the node has an identity (the token is spent)
    identity["ready"] = True
    group._identity_checked = 0.0
    group._start_deferred()

    # Then the waiting worker starts without it, and a restart of the bridge would too
    assert spawned == [{"KEEP": "1"}]
    assert all("CODA_NODE_TOKEN" not in member.env for member in group._members.values())


def test_a_stop_that_comes_while_a_process_is_forked_still_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a group whose handler is installed, and a fork during which SIGTERM arrives
    group = ProcessGroup(drain_timeout_sec=5)
    group.add(ProcessSpec("bridge", (sys.executable, "-m", "bridge"), "x:main"), {})
    sleeper = subprocess.Popen(["sleep", "30"])

    def fork_with_a_signal(*args: Any) -> int:
        # as `systemctl stop` would, at the worst moment; sent to this thread, as the supervisor runs
        # one thread, so no thread another test left running here can take it while it is held
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        return sleeper.pid

    monkeypatch.setattr("coda_bridge.ops.group.fork_part", fork_with_a_signal)
    monkeypatch.setattr("coda_bridge.ops.group.can_fork", lambda: True)  # whatever else pytest runs
    previous = signal.signal(signal.SIGTERM, group._on_signal)
    try:
        # When the process is started
        group._spawn(group._members["bridge"])
        # Then the stop was handled once the new process was recorded: it got its SIGTERM
        assert sleeper.wait(5) == -signal.SIGTERM
        assert group._members["bridge"].signalled
    finally:
        signal.signal(signal.SIGTERM, previous)
        sleeper.kill()
        sleeper.wait()


def test_nothing_new_starts_once_a_stop_was_asked() -> None:
    group = ProcessGroup(drain_timeout_sec=5)
    group.add(ProcessSpec("jobs", ("true",)), {})
    group.request_stop("test")

    group._spawn(group._members["jobs"])

    assert group._members["jobs"].process is None and group._members["jobs"].done


def test_a_process_reaped_by_someone_else_counts_as_gone() -> None:
    # Given a pid that is not our child (as when SIGCHLD was left ignored and the kernel reaped it)
    forked = ForkedProcess(os.getppid())
    # Then polling it says it is gone, instead of "running" forever
    assert forked.poll() == 0


class _ClosedOutput:
    def write(self, text: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_output_does_not_end_the_supervisor() -> None:
    # Given `coda-bridge start | tee log` after tee died
    group = ProcessGroup(drain_timeout_sec=5, printer=Printer(output=_ClosedOutput(), colour=False))
    # Then its lines are lost, and supervising goes on
    group._system_print("a line nobody reads\n")
    group.request_stop("SIGTERM received")
    assert group._stop_at is not None


@pytest.mark.parametrize("error", [errno.EAGAIN, errno.ENOMEM])
def test_out_of_processes_or_memory_is_tried_again_not_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    group = ProcessGroup(drain_timeout_sec=5, backoff_start_sec=0.5)
    group.add(ProcessSpec("jobs", (sys.executable, "-m", "jobs"), "x:main"), {})

    def fork_fails(*args: Any) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr("coda_bridge.ops.group.fork_part", fork_fails)
    monkeypatch.setattr("coda_bridge.ops.group.can_fork", lambda: True)  # whatever else pytest runs
    group._spawn(group._members["jobs"])

    member = group._members["jobs"]
    assert not member.done and member.restart_at is not None
    assert group._fatal is None and group._stop_at is None


def test_a_program_that_does_not_exist_is_a_configuration_error() -> None:
    group = ProcessGroup(drain_timeout_sec=5)
    group.add(ProcessSpec("jobs", ("/nonexistent/coda-bridge-program",)), {})

    group._spawn(group._members["jobs"])

    assert group._members["jobs"].done and group._fatal == 78


def test_sighup_stops_the_node_only_when_its_output_is_a_terminal_that_hung_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a group whose output is a file (start -d), and one whose output is a terminal
    printed: list[str] = []
    to_file = ProcessGroup(drain_timeout_sec=5, printer=Printer(output=sys.stderr))
    monkeypatch.setattr(to_file, "_system_print", printed.append)
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    # When a SIGHUP comes to the first
    to_file._on_signal(signal.SIGHUP, None)
    # Then it only asks for the log to be reopened: no stop
    assert to_file._reopen and to_file.reason is None and to_file._stop_at is None
    # When a SIGHUP comes to a group writing to a terminal
    on_tty = ProcessGroup(drain_timeout_sec=5, printer=Printer(output=sys.stderr))
    monkeypatch.setattr(on_tty, "_system_print", printed.append)
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    on_tty._on_signal(signal.SIGHUP, None)
    # Then the terminal hung up: it drains, as on SIGTERM
    assert on_tty.reason == "SIGHUP received"
    assert not on_tty._reopen
