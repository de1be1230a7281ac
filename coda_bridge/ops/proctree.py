"""Process trees read from Linux ``/proc``: who descends from whom, who is alive, kill them all.

A dramatiq master's worker processes sit in their own process groups (see
``broker.IsolateWorkerProcess``), so stopping a whole subtree goes by
parentage, not by process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

__all__ = ["alive", "descendants", "kill_tree", "process_tree"]


def _stat_fields(pid: int | str) -> list[str]:
    """The fields after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[-1].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    return process_tree(pid)[1:]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = _stat_fields(pid)[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X", "x")


def kill_tree(pids: Sequence[int]) -> None:
    """SIGKILL every pid given (collect them with :func:`process_tree` before anything dies)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
