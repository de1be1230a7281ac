"""The node's processes as one group: started, watched, restarted with backoff, and drained in order.

Each process runs in a process group of its own and gets exactly one
SIGTERM; its output is passed on with a ``name |`` prefix
(:mod:`~coda_bridge.ops.output_relay`).
A process with an entry point is forked from this one (which preloaded
what they all import, :mod:`~coda_bridge.ops.forking`); any other is an
``exec`` of its command line.  The group runs in one thread (its output
is read in its loop), so it can fork safely; what it prints waits for a
slow reader in a bounded buffer, so a paused terminal never stops
supervising.  SIGTERM and SIGINT drain the
node; SIGHUP reopens the log of ``start --daemon`` (logrotate) and stops
the node only when its output is a terminal that hung up.
:mod:`~coda_bridge.ops.supervisor` builds the plan and runs the group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from honcho.colour import get_colours
from honcho.printer import Printer

from ..backoff import Backoff
from .drain import DRAIN_PLAN, drain_stage
from .exits import (
    CLEAN_EXITS,
    EX_CONFIG,
    RESTART_BACKOFF_MAX_SEC,
    RESTART_BACKOFF_START_SEC,
    STABLE_RUN_SEC,
    describe_exit,
    exit_status,
)
from .forking import can_fork, exec_setup, fork_part, signals_held
from .logfile import LOG_FILE_ENV, reopen_log
from .members import ForkedProcess, Member
from .output_relay import OutputRelay
from .process_list import ProcessSpec
from .proctree import kill_tree, process_tree

__all__ = ["ProcessGroup"]

#: Time past the drain timeout before the group kills what is still running.
KILL_MARGIN_SEC = 10.0
#: How often the group looks at its processes (exits, restarts due, the drain's next stage); output
#: is passed on as it comes.
LOOP_POLL_SEC = 0.05
#: How often the group looks whether the node has an identity yet (to start the deferred processes).
IDENTITY_POLL_SEC = 0.1
#: What a later start runs together with the bridge: what the first /ready 200 needs (the probes, and
#: the control worker's VPN check).  The others start once the bridge connected, off its CPU.
READY_PATH = ("control", "web")
#: gunicorn workers of the probes app under ``start`` (each has threads; see gunicorn_config).
WEB_WORKERS = 1
#: Why a process may fail to start now and start later: out of processes, or of memory.
TRANSIENT_START_ERRORS = frozenset({errno.EAGAIN, errno.ENOMEM})


class ProcessGroup:
    """The node's processes: started, watched, restarted with backoff, and drained in order."""

    def __init__(
        self,
        *,
        drain_timeout_sec: float,
        results_flushed: Callable[[], bool] | None = None,
        identity_ready: Callable[[], bool] | None = None,
        spent_env: Sequence[str] = (),
        printer: Printer | None = None,
        backoff_start_sec: float = RESTART_BACKOFF_START_SEC,
        backoff_max_sec: float = RESTART_BACKOFF_MAX_SEC,
        stable_sec: float = STABLE_RUN_SEC,
        fork: bool = True,
        json_lines: bool = False,
    ) -> None:
        self.drain_timeout_sec = drain_timeout_sec
        self.results_flushed = results_flushed or (lambda: True)
        self.identity_ready = identity_ready or (lambda: True)
        # needed only until the node has an identity (a one-time token): then gone from every
        # environment, so neither a restart nor a part forked later gets it
        self.spent_env = tuple(spent_env)
        self.backoff_start_sec = backoff_start_sec
        self.backoff_max_sec = backoff_max_sec
        self.stable_sec = stable_sec
        self.returncode: int | None = None
        #: Why the group stopped, in one line (the first cause: a signal, or a process that gave up).
        self.reason: str | None = None
        self._lines = OutputRelay(printer, json_lines=json_lines)
        self._output = self._lines.output
        self._fork = fork
        self._colours = get_colours()
        self._members: dict[str, Member] = {}
        self._deferred: list[str] = []
        self._identity_checked = 0.0
        self._stop_at: float | None = None
        self._forced = False
        self._fatal: int | None = None
        self._stage = 0  # the stage of DRAIN_PLAN a drain has reached
        self._reopen = False  # a SIGHUP came: reopen the log

    def add(self, spec: ProcessSpec, env: Mapping[str, str], *, deferred: bool = False) -> None:
        """Run ``spec`` in the group; a ``deferred`` one once ``identity_ready()`` says so."""
        backoff = Backoff(self.backoff_start_sec, self.backoff_max_sec)
        colour = next(self._colours)
        self._members[spec.name] = Member(
            spec.name, list(spec.argv), dict(env), colour, backoff, entry=spec.entry
        )
        self._lines.named(spec.name)
        if deferred:
            self._deferred.append(spec.name)

    def _system_print(self, text: str) -> None:
        self._lines.system_print(text)

    # -- starting --

    def _spawn(self, member: Member) -> None:
        """Fork or exec one run of ``member``; a stop asked meanwhile is handled once it is recorded."""
        if self._stop_at is not None:  # a stop came first: nothing new starts
            self._finish(member, 0)
            self._system_print(f"not starting {member.name}\n")
            return
        with signals_held():
            started = self._start(member)
        if started:
            self._system_print(f"{member.name} started (pid={member.pid})\n")

    def _start(self, member: Member) -> bool:
        read_fd, write_fd = os.pipe()
        try:
            if member.entry is not None and self._fork and can_fork():
                member.process = ForkedProcess(fork_part(member.entry, member.argv, member.env, write_fd))
            else:
                member.process = subprocess.Popen(
                    member.argv,
                    env=member.env,
                    stdin=subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=write_fd,
                    process_group=0,
                    preexec_fn=exec_setup,  # noqa: PLW1509 (prctl and the signal mask: no locks)
                )
        except OSError as exc:
            os.close(read_fd)
            self._cannot_start(member, exc)
            return False
        finally:
            os.close(write_fd)
        member.started_at = time.monotonic()
        member.restart_at = None
        self._lines.watch(member, read_fd)
        return True

    def _cannot_start(self, member: Member, exc: OSError) -> None:
        """Out of processes or memory: try again later; anything else (no such program): give up."""
        reason = exc.strerror or str(exc)
        if exc.errno in TRANSIENT_START_ERRORS:
            delay = member.backoff.next_delay()
            member.restart_at = time.monotonic() + delay
            self._system_print(f"{member.name}: cannot start now ({reason}); trying again in {delay:g} s\n")
            return
        self._system_print(f"{member.name}: cannot start {member.argv[0]}: {reason}\n")
        member.last_line = f"cannot start {member.argv[0]}: {reason}".encode()
        self._finish(member, EX_CONFIG)
        self._give_up(member, EX_CONFIG)

    def _start_deferred(self) -> None:
        """Start the deferred processes once the node has an identity; drop them when stopping first."""
        if not self._deferred:
            return
        if self._stop_at is not None:
            for name in self._deferred:
                self._members[name].done = True
            self._system_print(f"not starting {', '.join(self._deferred)}\n")
            self._deferred = []
            return
        now = time.monotonic()
        if now - self._identity_checked < IDENTITY_POLL_SEC:
            return
        self._identity_checked = now
        try:
            ready = self.identity_ready()
        except Exception:  # an unreadable state file: the bridge will say so
            ready = False
        if ready:
            for member in self._members.values():
                for name in self.spent_env:
                    member.env.pop(name, None)
            self._system_print(f"the node has an identity; starting {', '.join(self._deferred)}\n")
            for name in self._deferred:
                self._spawn(self._members[name])
            self._deferred = []

    # -- exits and restarts --

    def _finish(self, member: Member, returncode: int) -> None:
        member.done = True
        member.restart_at = None
        member.returncode = 0 if returncode in CLEAN_EXITS else exit_status(returncode)

    def _give_up(self, member: Member, returncode: int) -> None:
        if self._stop_at is None:
            self._fatal = returncode or 1
            self._lines.relay(0)  # its last words may still wait in the pipe
            said = member.last_line.decode(errors="replace").strip()
            self.reason = f"{member.name} exited with code {returncode}" + (f": {said}" if said else "")
            self.request_stop(f"{member.name} gave up")

    def _reap(self) -> None:
        now = time.monotonic()
        for member in self._members.values():
            process = member.process
            if member.done or process is None or member.restart_at is not None:
                continue
            returncode = process.poll()
            if returncode is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of its group (gunicorn's workers)
            if self._stop_at is not None or member.signalled or self._forced:
                self._finish(member, returncode)
                self._system_print(f"{member.name} stopped (rc={member.returncode})\n")
            elif returncode == EX_CONFIG:
                self._system_print(
                    f"{member.name} exited with a configuration error (code {EX_CONFIG}); "
                    "not restarting it.\n"
                )
                self._finish(member, returncode)
                self._system_print(f"{member.name} stopped (rc={member.returncode})\n")
                self._give_up(member, returncode)
            else:
                ran_sec = now - member.started_at
                if ran_sec >= self.stable_sec:
                    member.backoff.reset()
                member.restarts += 1
                delay = member.backoff.next_delay()
                self._system_print(
                    f"{member.name} (pid {process.pid}) exited with {describe_exit(returncode)} after "
                    f"{ran_sec:.1f} s; restarting in {delay:g} s (restart {member.restarts}).\n"
                )
                member.restart_at = now + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for member in self._members.values():
            if member.restart_at is None or member.done:
                continue
            if self._stop_at is not None:  # a stop came during the pause: it stays stopped
                self._finish(member, 0)
                self._system_print(f"{member.name} stopped (rc=0)\n")
            elif now >= member.restart_at:
                self._spawn(member)

    # -- stopping --

    def _terminate(self, names: list[str]) -> list[str]:
        """One SIGTERM to each named process, to it alone (its own children are its business).

        The lines saying so are returned, to be printed once every signal is sent.
        """
        said = []
        for name in names:
            member = self._members[name]
            if member.signalled or member.done or not member.running or member.pid is None:
                continue
            member.signalled = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGTERM)
            said.append(f"sending SIGTERM to {name} (pid {member.pid})\n")
        return said

    def _say(self, lines: list[str]) -> None:
        for line in lines:
            self._system_print(line)

    def request_stop(self, reason: str) -> None:
        """Begin the ordered drain (idempotent)."""
        if self._stop_at is not None:
            return
        self._stop_at = time.monotonic()
        self.reason = self.reason or reason
        said = self._terminate(self._staged())
        self._system_print(f"{reason}; draining (up to {self.drain_timeout_sec:g} s)\n")
        self._say(said)

    def force(self, reason: str) -> None:
        """Kill every process now, with everything it started."""
        if self._forced:
            return
        self._forced = True
        self._system_print(f"{reason}; killing every process now\n")
        trees = [process_tree(m.pid) for m in self._members.values() if m.running and m.pid is not None]
        for tree in trees:
            kill_tree(tree)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP and not os.isatty(1):
            self._reopen = True  # logrotate's HUP (a terminal's hang-up stops the node, below)
            return
        if self._stop_at is None:
            self.request_stop(f"{name} received")
        else:
            self.force(f"second signal ({name})")

    def _staged(self) -> list[str]:
        """The processes of the drain's stages so far (:data:`~coda_bridge.ops.drain.DRAIN_PLAN`)."""
        return [name for name in self._members if drain_stage(name) <= self._stage]

    def _reopen_log(self) -> None:
        """SIGHUP: the log file of ``start --daemon`` opened again at its path; the node goes on."""
        self._reopen = False
        path = os.environ.get(LOG_FILE_ENV)
        if not path:
            self._system_print("SIGHUP received: no log file to reopen (not started with -d); going on\n")
            return
        if self._output is not None:
            self._output.drain(0)  # what waits goes to the old file, where it belongs
        try:
            reopen_log(Path(path))
        except OSError as exc:
            self._system_print(f"SIGHUP received: cannot reopen the log {path}: {exc}; kept the old one\n")
            return
        if self._output is not None:
            self._output.reopened()
        self._system_print(f"SIGHUP received: log reopened at {path}\n")

    def _advance(self) -> None:
        """Move the drain along: the next stage once this one is done (and, if it asks, results flushed)."""
        if self._stop_at is None:
            return
        now = time.monotonic()
        deadline = self._stop_at + self.drain_timeout_sec
        # again each pass: one that started as the stop came, or was restarting, gets its signal too
        self._say(self._terminate(self._staged()))
        while self._stage < len(DRAIN_PLAN) - 1:
            following = DRAIN_PLAN[self._stage + 1]
            done = all(self._members[name].done for name in self._staged())
            ready = done and (not following.after_results_flushed or self.results_flushed())
            if not (ready or now > deadline):
                break
            self._stage += 1
            self._say(self._terminate(self._staged()))
        if now > deadline + KILL_MARGIN_SEC:
            self.force(f"drain timeout of {self.drain_timeout_sec:g} s passed")

    # -- the loop --

    def loop(self) -> None:
        """Run the group until every process stopped; ``returncode`` is 0 after a clean drain."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for name, member in self._members.items():
            if name not in self._deferred:
                self._spawn(member)
        while True:
            self._reap()
            self._restart_due()
            self._start_deferred()
            self._advance()
            if not self._deferred and all(m.done for m in self._members.values()):
                break
            self._lines.relay(LOOP_POLL_SEC)
            if self._reopen:
                self._reopen_log()
            if self._output is not None:
                self._output.pump()  # what waited for a slow reader
        self._lines.finish(self._members.values())
        codes = [m.returncode or 0 for m in self._members.values()]
        if self._fatal is not None:
            self.returncode = self._fatal
        elif self._forced:
            self.returncode = 1
        else:
            self.returncode = next((c for c in codes if c), 0)
        self._system_print(f"all processes stopped (rc={self.returncode})\n")
        self._lines.drain()
