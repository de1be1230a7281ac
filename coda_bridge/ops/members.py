"""The processes of ``start``'s group, each one member: its command, and where it is in its life."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from ..backoff import Backoff

__all__ = ["ForkedProcess", "Member"]


class ForkedProcess:
    """A process forked from this one, watched like a :class:`subprocess.Popen` (``poll``, ``returncode``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): gone, as Popen says
                self.returncode = 0
                return 0
            if pid == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@dataclass
class Member:
    """One process of the group: its command, and where it is in its life."""

    name: str
    argv: list[str]
    env: dict[str, str]
    colour: str
    backoff: Backoff
    entry: str | None = None
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    signalled: bool = False
    done: bool = False
    returncode: int | None = None
    outputs: set[int] = field(default_factory=set)  # read ends of its runs' output still open
    last_line: bytes = b""  # what it said last (why it gave up, when it does)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
