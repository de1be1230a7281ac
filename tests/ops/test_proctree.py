"""Process trees through psutil: order, zombies, processes that vanish mid-walk, and safe kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from coda_bridge.ops import proctree
from coda_bridge.ops.proctree import alive, descendants, kill_tree, process_tree

# psutil's per-platform reader, under its caches: where a process that vanishes or is hidden shows
PLATFORM_PROCESS = type(psutil.Process()._proc)

# A parent with two children, one of which has a child of its own; the parent prints every pid.
FAMILY = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
middle = f"import subprocess as s, time; p = s.Popen({sleeper!r}); print(p.pid, flush=True); time.sleep(60)"
a = subprocess.Popen(sleeper)
b = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
grandchild = int(b.stdout.readline())
print(a.pid, b.pid, grandchild, flush=True)
time.sleep(60)
"""


# A parent whose child has exited and is never reaped: a zombie until the parent goes.
ZOMBIE_PARENT = """
import subprocess, time
child = subprocess.Popen(["true"])
print(child.pid, flush=True)
time.sleep(60)
"""


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def spawn() -> Iterator[Callable[[str], tuple[subprocess.Popen[str], list[int]]]]:
    """Start a Python script that prints pids on its first line; kill what it started at the end."""
    started: list[tuple[subprocess.Popen[str], list[int]]] = []

    def run(script: str) -> tuple[subprocess.Popen[str], list[int]]:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        started.append((proc, pids))
        return proc, pids

    yield run
    for proc, pids in started:
        for pid in [proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        proc.wait(timeout=10)


def test_a_tree_lists_parents_before_children(spawn: Any) -> None:
    parent, (a, b, grandchild) = spawn(FAMILY)
    tree = process_tree(parent.pid)
    assert tree[0] == parent.pid
    assert sorted(tree) == sorted([parent.pid, a, b, grandchild])
    assert tree.index(b) < tree.index(grandchild)
    assert descendants(parent.pid) == tree[1:]
    assert process_tree(grandchild) == [grandchild]


def test_a_gone_pid_is_its_own_tree_and_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert process_tree(proc.pid) == [proc.pid]
    assert descendants(proc.pid) == []
    assert not alive(proc.pid)


def test_alive_for_running_zombie_and_reaped(spawn: Any) -> None:
    assert alive(os.getpid())
    parent, (zombie,) = spawn(ZOMBIE_PARENT)
    wait_until(lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE)
    assert alive(parent.pid)
    assert not alive(zombie)  # exited; only waiting for its parent to reap it
    assert process_tree(parent.pid) == [parent.pid, zombie]  # a zombie still holds its pid


def test_pids_that_name_process_groups_are_never_alive_and_never_signalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(proctree.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert not alive(0)
    assert not alive(-1)
    assert process_tree(0) == [0]  # not init, kthreadd and everything below them
    assert descendants(-1) == []
    kill_tree([0, -1, 4242])
    assert sent == [(4242, signal.SIGKILL)]


def test_kill_tree_kills_every_member_and_ignores_the_gone(spawn: Any) -> None:
    parent, pids = spawn(FAMILY)
    tree = process_tree(parent.pid)
    kill_tree(tree)
    parent.wait(timeout=10)
    wait_until(lambda: not any(alive(pid) for pid in pids))
    kill_tree(tree)  # every pid is gone now: no error


def test_a_process_that_vanishes_mid_walk_is_left_out(spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    parent, (a, b, _) = spawn(FAMILY)
    real_ppid = PLATFORM_PROCESS.ppid

    def ppid(self: Any) -> int:
        if self.pid == b:  # listed, then gone before its parent could be read
            raise psutil.NoSuchProcess(self.pid)
        return real_ppid(self)

    monkeypatch.setattr(PLATFORM_PROCESS, "ppid", ppid)
    assert sorted(process_tree(parent.pid)) == sorted([parent.pid, a])  # b, and so its child, are gone


def test_a_process_we_may_not_look_at_is_skipped(spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    parent, (a, b, grandchild) = spawn(FAMILY)
    real_ppid = PLATFORM_PROCESS.ppid

    def ppid(self: Any) -> int:
        if self.pid == a:  # /proc mounted with hidepid=1: listed, not readable
            raise psutil.AccessDenied(self.pid)
        return real_ppid(self)

    monkeypatch.setattr(PLATFORM_PROCESS, "ppid", ppid)
    assert sorted(process_tree(parent.pid)) == sorted([parent.pid, b, grandchild])


def test_alive_when_the_process_vanishes_or_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(self: psutil.Process) -> str:
        raise psutil.NoSuchProcess(self.pid)

    def denied(self: psutil.Process) -> str:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "status", gone)
    assert not alive(os.getpid())
    monkeypatch.setattr(psutil.Process, "status", denied)
    assert alive(os.getpid())


def test_walking_while_processes_come_and_go() -> None:
    storm = subprocess.Popen(["sh", "-c", "for i in $(seq 300); do /bin/true & done; wait"])
    try:
        while storm.poll() is None:
            tree = process_tree(storm.pid)
            assert tree[0] == storm.pid
            assert len(tree) == len(set(tree))
    finally:
        storm.wait(timeout=30)
