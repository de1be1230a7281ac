"""Process trees (through psutil): who descends from whom, who is alive, kill them all.

A dramatiq master's worker processes sit in their own process groups (see
``broker.IsolateWorkerProcess``), so stopping a whole subtree goes by
parentage, not by process group.

Processes come and go while a tree is walked: one that is gone by the time
it is looked at is simply not part of the answer.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from collections.abc import Sequence

import psutil

__all__ = ["alive", "descendants", "kill_tree", "process_tree"]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children (``[pid]`` when it has none, or is gone).

    Zombies count as members: they hold their pid until they are reaped.
    """
    if pid <= 0:  # not a process: "the children of 0" would be init and kthreadd, then everything
        return [pid]
    children: dict[int, list[int]] = {}
    # one pass over every process: a process psutil cannot look at (hidepid) has ppid None and is skipped
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(proc.pid)
    tree, todo = [], collections.deque([pid])
    while todo:
        current = todo.popleft()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    return process_tree(pid)[1:]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    if pid <= 0:  # 0 and negative pids name process groups for os.kill, never one process
        return False
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists; we may not look at it
        return True


def kill_tree(pids: Sequence[int]) -> None:
    """SIGKILL every pid given (collect them with :func:`process_tree` before anything dies)."""
    for pid in pids:
        if pid <= 0:  # os.kill(0) or os.kill(-1) would hit a whole group, or everything
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
