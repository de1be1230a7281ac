"""What a child process's exit means to the supervisor, and the restart policy.

A child that exits without having been told to stop is started again
after 1 s, 2 s, 4 s ... up to 30 s (back to 1 s once a run lasted a
minute).  A child that exits with :data:`EX_CONFIG` cannot work as
configured and is not restarted.
"""

from __future__ import annotations

import ctypes
import signal
from typing import Any

__all__ = [
    "CLEAN_EXITS",
    "EX_CONFIG",
    "FORCED_EXIT",
    "RESTART_BACKOFF_MAX_SEC",
    "RESTART_BACKOFF_START_SEC",
    "STABLE_RUN_SEC",
    "describe_exit",
    "die_with_parent",
    "exit_status",
]

#: Exit status of a process that cannot work as configured (sysexits.h): restarting will not help.
EX_CONFIG = 78
#: First pause before a restart.
RESTART_BACKOFF_START_SEC = 1.0
#: Longest pause before a restart.
RESTART_BACKOFF_MAX_SEC = 30.0
#: A run at least this long resets the backoff to its start.
STABLE_RUN_SEC = 60.0
#: Exit status after a forced stop (as if killed by SIGKILL).
FORCED_EXIT = 128 + signal.SIGKILL
#: Exit statuses of a process that stopped because it was told to (0, or SIGTERM itself).
CLEAN_EXITS = frozenset({0, -signal.SIGTERM, 128 + signal.SIGTERM})
_PR_SET_PDEATHSIG = 1
try:  # resolved once here: between fork and exec only the call itself runs
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that started it dies (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def exit_status(returncode: int) -> int:
    """A shell's exit status for a ``Popen.returncode`` (128 + the signal when killed)."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """``signal SIGKILL`` or ``code 3``, from a ``Popen.returncode``."""
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"code {returncode}"
