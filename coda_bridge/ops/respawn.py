"""Keep one child process running: restart it with backoff, stop it with exactly one SIGTERM.

``python -m coda_bridge.ops.respawn --name jobs -- dramatiq actors --queues jobs``
runs one command supervised on its own (by hand, or under a manager that
signals whole process groups).  ``coda-bridge start`` does not use it: its
supervisor (:mod:`coda_bridge.ops.supervisor`) applies the same policy,
and the helpers below, to every process itself.  The child runs in its own
process group, so a SIGTERM sent to the wrapper's group (honcho, systemd)
reaches the child once, forwarded by the wrapper, never twice.  A child
that exits without having been told to stop is started again after 1 s,
2 s, 4 s ... up to 30 s (back to 1 s once a run lasted a minute), and each
restart is logged.  A child that exits with :data:`EX_CONFIG` cannot work
as configured and is not restarted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from .proctree import kill_tree, process_tree

__all__ = [
    "EX_CONFIG",
    "RESTART_BACKOFF_MAX_SEC",
    "RESTART_BACKOFF_START_SEC",
    "STABLE_RUN_SEC",
    "Respawner",
    "describe_exit",
    "die_with_parent",
    "exit_status",
    "respawn_argv",
]

logger = logging.getLogger("coda_bridge.ops.respawn")

#: Exit status of a process that cannot work as configured (sysexits.h): restarting will not help.
EX_CONFIG = 78
#: First pause before a restart.
RESTART_BACKOFF_START_SEC = 1.0
#: Longest pause before a restart.
RESTART_BACKOFF_MAX_SEC = 30.0
#: A run at least this long resets the backoff to its start.
STABLE_RUN_SEC = 60.0
#: Granularity of the interruptible pause between restarts.
PAUSE_STEP_SEC = 0.1
#: Exit status of the wrapper after a forced stop (as if killed by SIGKILL).
FORCED_EXIT = 128 + signal.SIGKILL
_PR_SET_PDEATHSIG = 1
#: Exit statuses of a process that stopped because it was told to (0, or SIGTERM itself).
CLEAN_EXITS = frozenset({0, -signal.SIGTERM, 128 + signal.SIGTERM})
_CLEAN_EXITS = CLEAN_EXITS
try:  # resolved once here: between fork and exec only the call itself runs
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that started it dies (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_child_setup = die_with_parent  # runs in the child between fork and exec: never outlive the wrapper


class Respawner:
    """Runs ``argv`` until told to stop, restarting it with exponential backoff when it dies."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        backoff_start_sec: float = RESTART_BACKOFF_START_SEC,
        backoff_max_sec: float = RESTART_BACKOFF_MAX_SEC,
        stable_sec: float = STABLE_RUN_SEC,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.backoff_start_sec = backoff_start_sec
        self.backoff_max_sec = backoff_max_sec
        self.stable_sec = stable_sec
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._signals = 0
        self._forwarded = False
        self._forced = False

    # -- signals --

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        child = self.child
        running = child is not None and child.poll() is None
        if self._signals == 1:
            logger.info("%s: %s received; stopping.", self.name, signal.Signals(signum).name)
            if running:
                self._forward()
        else:
            self._forced = True
            if running and child is not None:
                logger.warning("%s: second signal; killing it now.", self.name)
                kill_tree(process_tree(child.pid))

    def _forward(self) -> None:
        """Send the child its one SIGTERM (to the child alone, not its group)."""
        if self._forwarded or self.child is None:
            return
        self._forwarded = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child.pid, signal.SIGTERM)

    @property
    def stopping(self) -> bool:
        return self._signals > 0

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # -- the loop --

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(PAUSE_STEP_SEC, max(deadline - time.monotonic(), 0)))

    def _start_child(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, process_group=0, preexec_fn=_child_setup)  # noqa: PLW1509

    def run(self) -> int:
        """Run until stopped; exit status 0 after a clean stop, else the child's (or :data:`FORCED_EXIT`)."""
        backoff = self.backoff_start_sec
        while not self.stopping:
            started = time.monotonic()
            try:
                self.child = self._start_child()
            except OSError as exc:
                logger.error("%s: cannot start %s: %s", self.name, self.argv[0], exc.strerror or exc)
                return EX_CONFIG
            if self.stopping:  # a signal that came while the child was being created
                self._forward()
            returncode = self.child.wait()
            ran_sec = time.monotonic() - started
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, signal.SIGKILL)  # leftovers of its group
            if self.stopping:
                if self._forced:
                    return FORCED_EXIT
                return 0 if returncode in _CLEAN_EXITS else exit_status(returncode)
            if returncode == EX_CONFIG:
                logger.error(
                    "%s exited with a configuration error (code %d); not restarting it.", self.name, EX_CONFIG
                )
                return EX_CONFIG
            if ran_sec >= self.stable_sec:
                backoff = self.backoff_start_sec
            self.restarts += 1
            logger.warning(
                "%s (pid %d) exited with %s after %.1f s; restarting in %g s (restart %d).",
                self.name,
                self.child.pid,
                describe_exit(returncode),
                ran_sec,
                backoff,
                self.restarts,
            )
            self._pause(backoff)
            backoff = min(backoff * 2, self.backoff_max_sec)
        return 0


def exit_status(returncode: int) -> int:
    """A shell's exit status for a ``Popen.returncode`` (128 + the signal when killed)."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """``signal SIGKILL`` or ``code 3``, from a ``Popen.returncode``."""
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"code {returncode}"


def respawn_argv(name: str, argv: Sequence[str], python: str | None = None) -> list[str]:
    """The command line that runs ``argv`` under this wrapper."""
    return [python or sys.executable, "-m", "coda_bridge.ops.respawn", "--name", name, "--", *argv]


def main(args: Sequence[str] | None = None) -> int:
    """``python -m coda_bridge.ops.respawn --name NAME -- COMMAND...``"""
    values = list(sys.argv[1:] if args is None else args)
    name = "child"
    if len(values) >= 2 and values[0] == "--name":
        name, values = values[1], values[2:]
    if values[:1] == ["--"]:
        values = values[1:]
    if not values:
        print("usage: python -m coda_bridge.ops.respawn --name NAME -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s supervisor: %(message)s")
    respawner = Respawner(name, values)
    respawner.install_signal_handlers()
    return respawner.run()


if __name__ == "__main__":
    sys.exit(main())
