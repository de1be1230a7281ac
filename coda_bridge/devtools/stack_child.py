"""One process of a :class:`~coda_bridge.devtools.stack.LocalStack`: started, signalled, stopped.

Each runs in a session of its own with its output in a log file; a stop
sends one SIGTERM, then kills whatever is left of it and its descendants;
a kill does not wait for a drain.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from ..ops.process_list import ProcessSpec
from ..ops.proctree import descendants

__all__ = ["STOP_GRACE_SEC", "StackChild"]

#: How long a process gets between SIGTERM and SIGKILL when a stack stops.
STOP_GRACE_SEC = 10.0


class StackChild:
    """One process of a stack, in a session of its own, its output appended to ``log_path``."""

    def __init__(self, spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.terminated = False
        self.process = subprocess.Popen(
            spec.argv,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.process.pid, signum)
            self.terminated = self.terminated or signum == signal.SIGTERM

    def kill_group(self) -> None:
        """SIGKILL the process and every descendant (dramatiq worker processes have their own groups)."""
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> int | None:
        """SIGKILL the process and its descendants now, no drain; wait for it."""
        self.kill_group()
        self.process.wait()
        self._log.close()
        return self.process.returncode

    def stop(self, grace_sec: float = STOP_GRACE_SEC, *, family: list[int] | None = None) -> int | None:
        """SIGTERM, wait, then SIGKILL whatever is left of the process and its descendants."""
        family = descendants(self.process.pid) if family is None else family
        if self.alive():
            if not self.terminated:  # a second SIGTERM makes a dramatiq worker skip its drain
                self.signal(signal.SIGTERM)
            try:
                self.process.wait(grace_sec)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.process.wait()
        for pid in family:  # orphans of a master that died first
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        return self.process.returncode
