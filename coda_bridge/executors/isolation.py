"""The executor's runs in child processes of the worker: a crash or a stuck run costs a child, not the worker.

A child is forked from the worker once the executor is built (it inherits
the built executor) and serves runs over a pipe, one at a time
(:mod:`~coda_bridge.executors.child` is the child's side).  A run
that is cancelled or overruns is asked to stop (``cancel_current_job()``
runs in the child, on a thread of its own, so a blocking cancel blocks
nothing); a run that has not ended within the grace loses its child to a
SIGKILL.  A child that dies (``os._exit``, a signal, the OOM killer) is
reported with its exit status, and the next run gets a fresh child.
Like Celery's prefork pool, the worker that watches the cancel key and
the time limit never shares a process (or a GIL) with the executor.

Between two runs the device waits for nothing: a job prepared ahead is
queued in the busy child (:meth:`ExecutorProcesses.queue_behind`), which
starts it the moment the run before it ends, says so (a start notice, so
the worker writes the running mark behind it) and answers each run as it
ends.  A queued run the worker withdraws (a cancel, a drain) before the
child reached it never starts; one without a start notice when the child
died is run again in a fresh child (it never started, or its process died
within moments of its start, the case a crashed run is run again for).
The worker and its children switch threads every :data:`SWITCH_INTERVAL_SEC`
(Python's default is 5 ms), so a thread that must start the next run, or
answer the one that ended, never waits out another thread's slice of the
interpreter.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .child import describe_error, fork_child

__all__ = ["Answer", "Died", "ExecutorProcess", "ExecutorProcesses", "describe_error", "describe_status"]

logger = logging.getLogger(__name__)

#: How long a child that closed its pipe gets to be reaped before it is killed.
REAP_WAIT_SEC = 2.0
#: How often reaping looks at the child again.
REAP_POLL_SEC = 0.01
#: The interpreter's thread switch interval in a worker with executor children and in the children:
#: a thread waking to hand the device its next run gets the interpreter within this.
SWITCH_INTERVAL_SEC = 0.0005
#: How many runs may be queued in a child behind the one it runs (the jobs prepared ahead).
QUEUED_RUNS_MAX = 2


class _Forker:
    """Forks the executor's children on one thread that lives as long as the process.

    A child's parent-death signal (``PR_SET_PDEATHSIG``) fires when the *thread* that forked it ends,
    and a worker's threads end one by one as it stops (the one holding a job prepared ahead first)
    while another may still run a job on the same kept child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] | None = None
        self._pid: int | None = None

    def run(self, make: Callable[[], Any]) -> Any:
        """``make()`` on the forking thread; its value, or its exception raised here."""
        with self._lock:
            if self._requests is None or self._pid != os.getpid():  # none yet, or a forked process
                self._requests = queue.SimpleQueue()
                self._pid = os.getpid()
                threading.Thread(
                    target=self._serve, args=(self._requests,), name="coda-executor-forker", daemon=True
                ).start()
            requests = self._requests
        answer: list[Any] = []
        done = threading.Event()
        requests.put((make, answer, done))
        done.wait()
        ok, value = answer
        if not ok:
            raise value
        return value

    @staticmethod
    def _serve(requests: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]]) -> None:
        while True:
            make, answer, done = requests.get()
            try:
                answer.extend((True, make()))
            except BaseException as exc:  # handed to the caller's thread
                answer.extend((False, exc))
            finally:
                done.set()


_FORKER = _Forker()


#: What a child's call came to: ``("ok", value)``, ``("error", text)`` or ``("withdrawn", None)``.
Answer = tuple[str, Any]


@dataclass(frozen=True)
class Died:
    """The child running a call died before it answered; ``how`` names its exit status."""

    how: str


def describe_status(status: int) -> str:
    """``signal 11 (SIGSEGV)`` or ``exit code 1``, from an ``os.waitpid`` status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {number} ({signal.Signals(number).name})"
        except ValueError:
            return f"signal {number}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


class ExecutorProcess:
    """One forked child holding the executor; the worker sends it calls and reads one reply per call.

    Calls are tagged, so a run queued behind the one in progress (a lane of
    one) is answered, started, cancelled or withdrawn on its own; any worker
    thread reads the pipe for all of them and files what it read by tag.
    """

    def __init__(self, executor: Any, calls: dict[str, Callable[..., Any]], cancel: Callable[[Any], Any]):
        self.pid, self.conn = _FORKER.run(lambda: fork_child(executor, calls, cancel))
        self.died: str | None = None
        #: Runs handed to this child and not yet ended, as the worker sees them (owned by ExecutorProcesses).
        self.users = 0
        self._tags = itertools.count()
        self._last_tag = -1
        self._sending = threading.Lock()
        self._reaping = threading.Lock()
        self._reading = False
        self._mail = threading.Condition()
        self._answers: dict[int, Answer] = {}
        self._started: set[int] = set()

    def call(self, method: str, *args: Any, notify: bool = False) -> int:
        """Send a call, run after those before it; its tag, for :meth:`reply` (``notify``: a start notice)."""
        tag = next(self._tags)
        with self._sending:
            self.conn.send(("call", tag, method, args, notify))
        self._last_tag = tag
        return tag

    def reply(self, timeout: float, tag: int | None = None) -> Answer | Died | None:
        """``("ok", value)``, ``("error", text)`` or ``("withdrawn", None)`` for the call ``tag`` (the last).

        :class:`Died` if the child died first; ``None`` on timeout.
        """
        tag = self._last_tag if tag is None else tag
        return self._await(lambda: self._answers.pop(tag, None), timeout)

    def started(self, tag: int, timeout: float) -> Answer | Died | bool:
        """True once the child started the queued call ``tag``; its answer if withdrawn; False on timeout."""

        def look() -> Answer | bool | None:
            if tag in self._started:
                self._started.discard(tag)  # told once: the caller watches it as a run from now on
                return True
            return self._answers.pop(tag, None)

        found = self._await(look, timeout)
        return False if found is None else found

    def _await(self, look: Callable[[], Any], timeout: float) -> Any:
        """What ``look`` finds in the mail, reading the pipe (one thread at a time) until it does."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._mail:
            while True:
                found = look()
                if found is not None:
                    return found
                if self.died is not None:
                    return Died(self.died)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self._reading:  # another thread reads; it files our mail and wakes us
                    self._mail.wait(left)
                    continue
                self._reading = True
                self._mail.release()
                try:
                    message = self.conn.recv() if self.conn.poll(left) else None
                except (EOFError, OSError):
                    message = Died(self._reap())
                finally:
                    self._mail.acquire()
                    self._reading = False
                    self._mail.notify_all()
                if isinstance(message, tuple) and message[0] == "started":
                    self._started.add(message[1])
                elif isinstance(message, tuple):
                    self._answers[message[0]] = (message[1], message[2])

    def cancel(self, tag: int | None = None) -> None:
        """Ask the run ``tag`` (the last call) to stop, if it is the one running; a dead child is left."""
        with contextlib.suppress(OSError, ValueError), self._sending:
            self.conn.send(("cancel", self._last_tag if tag is None else tag))

    def withdraw(self, tag: int) -> None:
        """Ask the child not to start the queued call ``tag``; it answers ``withdrawn`` or has started it."""
        with contextlib.suppress(OSError, ValueError), self._sending:
            self.conn.send(("withdraw", tag))

    def kill(self) -> str:
        """End the child now (SIGKILL) and reap it; how it ended."""
        if self.died is None:  # once reaped, its pid may be another process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        return self._reap()

    def _reap(self) -> str:
        with self._reaping:
            return self._reap_once()

    def _reap_once(self) -> str:
        if self.died is not None:
            return self.died
        self.conn.close()
        deadline = time.monotonic() + REAP_WAIT_SEC
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): the status is lost
                self.died = "an unknown exit status"
                return self.died
            if pid:
                self.died = describe_status(status)
                return self.died
            if time.monotonic() > deadline:  # closed its pipe but lives on: it cannot be trusted
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + REAP_WAIT_SEC
            time.sleep(REAP_POLL_SEC)


class ExecutorProcesses:
    """The children of one worker: at most ``slots`` running at once, idle ones kept for the next run."""

    def __init__(
        self,
        executor: Callable[[], Any],
        calls: dict[str, Callable[..., Any]],
        cancel: Callable[[Any], Any],
        slots: int,
    ) -> None:
        self._executor = executor
        self._calls = calls
        self._cancel = cancel
        self._slots = threading.BoundedSemaphore(slots)
        sys.setswitchinterval(SWITCH_INTERVAL_SEC)  # this process hands runs over; its children inherit it
        self._idle: list[ExecutorProcess] = []
        self._lock = threading.Lock()
        self._busy: list[ExecutorProcess] = []
        self._reserved = threading.local()

    @property
    def slots(self) -> threading.BoundedSemaphore:
        """The run slots: whoever holds all of them has the device to itself (a calibration)."""
        return self._slots

    def reserve(self, timeout: float) -> bool:
        """Take a slot for this thread's next :meth:`take` (a job prepared ahead); False after ``timeout``.

        The job waiting ahead starts the moment the run before it gives its
        slot back, without waiting for that run's result to be recorded.
        """
        if getattr(self._reserved, "slot", False):
            return True
        self._reserved.slot = self._slots.acquire(timeout=max(timeout, 0.0))
        return bool(self._reserved.slot)

    def unreserve(self) -> None:
        """Give back a slot this thread reserved and did not use."""
        if getattr(self._reserved, "slot", False):
            self._reserved.slot = False
            self._slots.release()

    def take(self) -> ExecutorProcess:
        """An idle child, or a freshly forked one; waits while every slot runs (unless one is reserved)."""
        try:
            executor = self._executor()  # built (or failing) before a slot is taken
        except BaseException:
            self.unreserve()
            raise
        if getattr(self._reserved, "slot", False):
            self._reserved.slot = False
        else:
            self._slots.acquire()
        with self._lock:
            child = self._idle.pop() if self._idle else None
        if child is None:
            try:
                child = ExecutorProcess(executor, self._calls, self._cancel)
            except BaseException:
                self._slots.release()
                raise
        with self._lock:
            child.users = 1
            self._busy.append(child)
        return child

    def queue_behind(self) -> ExecutorProcess | None:
        """A busy child with room for a run queued behind its own (its slot serves them all), or None.

        The run queued there (``call(..., notify=True)``) must be ended by
        :meth:`give_back` or :meth:`discard`, like the run before it.
        """
        with self._lock:
            for child in self._busy:
                if child.died is None and child.users <= QUEUED_RUNS_MAX:
                    child.users += 1
                    return child
        return None

    def give_back(self, child: ExecutorProcess) -> None:
        """A child whose call answered: kept for the next run (once its queued run, if any, ended too)."""
        self._release(child, died=None)

    def discard(self, child: ExecutorProcess) -> str:
        """A child that died or would not stop: killed if need be and reaped; how it ended."""
        how = child.kill()
        self._release(child, died=how)
        return how

    def _release(self, child: ExecutorProcess, died: str | None) -> None:
        """One run on ``child`` ended; the last one frees the slot (and keeps the child, if alive)."""
        with self._lock:
            child.users -= 1
            if child.users > 0:  # a run queued behind it goes on
                return
            self._busy.remove(child)
            if died is None and child.died is None:
                self._idle.append(child)
        self._slots.release()
