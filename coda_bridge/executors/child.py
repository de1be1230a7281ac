"""The executor's child process: its calls one after another, the next the moment one ends.

The worker (:mod:`~coda_bridge.executors.isolation`) forks it with the built
executor and sends it tagged calls over a pipe.  A reader thread takes them
(and cancels, and withdrawals of a call queued but not started); the calls
run in order; answers and start notices leave from a sender thread of their
own, so the next run starts before the worker wakes.

An async executor's runs are awaited on the executors' event loop (the one
its async resources live on).  Once a call turned out to be async, the child
runs its calls *on* that loop while more are queued: a run ending and the next
one starting is then one step of one thread, with no thread to wake between
them.  A call that turns out to be plain hands the calls back to the child's
main thread, so a blocking run never holds the loop an async cancel needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import inspect
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import CodaError
from .base import Awaiting, resolve_awaitable

__all__ = ["DEFER_MAX_SEC", "OOM_SCORE_ADJ", "describe_error", "fork_child"]

_PR_SET_PDEATHSIG = 1
#: The child's ``oom_score_adj``: the most an unprivileged process may set, so the OOM killer picks it first.
OOM_SCORE_ADJ = 1000

#: Held from a child's pipe to its fork, so two runs starting at once never share a pipe's end.
_FORKING = threading.Lock()

#: Longest an answer or start notice waits for the next run's first await before it leaves anyway.
DEFER_MAX_SEC = 0.01

#: A call as the child queues it: its tag, method, arguments and whether the worker wants a start notice.
_Request = tuple[int, str, tuple[Any, ...], bool]


def describe_error(exc: BaseException) -> str:
    """The text a failed call reports: a node error's own words, else ``Type: message``."""
    if isinstance(exc, CodaError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def fork_child(
    executor: Any, calls: dict[str, Callable[..., Any]], cancel: Callable[[Any], Any]
) -> tuple[int, Connection]:
    """Fork one child serving ``executor``: its pid, and the worker's end of its pipe.

    ``calls`` map a method name to a function of the executor and the call's
    arguments that returns the answer, or an awaitable of it.
    """
    with _FORKING:  # no other child inherits this one's end, so its death always reads as EOF here
        ours, theirs = multiprocessing.Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child: serve until the worker goes away; never return into the worker's code
            code = 1
            try:
                ours.close()
                _detach()
                _Child(executor, theirs, calls, cancel).serve()
                code = 0
            finally:
                os._exit(code)
        theirs.close()
    return pid, ours


def _detach() -> None:
    """Die with the worker, take no terminal signal meant for it, and be the OOM killer's first pick."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a Ctrl-C or a group's SIGTERM is for the worker, which decides what the run gets
    with contextlib.suppress(OSError):  # out of memory, the kernel kills this child, never the worker
        Path("/proc/self/oom_score_adj").write_text(f"{OOM_SCORE_ADJ}\n")
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Child:
    """One child's life: a reader, a sender, and the calls run in order on one thread at a time."""

    def __init__(
        self,
        executor: Any,
        conn: Connection,
        calls: dict[str, Callable[..., Any]],
        cancel: Callable[[Any], Any],
    ) -> None:
        self.executor = executor
        self.conn = conn
        self.calls = calls
        self.cancel = cancel
        self.pending: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.turn = threading.Lock()  # between starting a call and withdrawing it: one or the other
        self.sending = threading.Lock()
        self.running: list[int] = []  # the tag of the call in progress, if any
        self.reached = -1  # the last tag started (tags grow, calls run in order)
        self.withdrawn: set[int] = set()
        #: How an answer or start notice leaves: the sender's queue, or after the next run started.
        self.post: Callable[[Any], None] = self.outbox.put
        #: Answers and notices waiting for the next run's first await (an answer to check: a callable).
        self.unsent: list[Any] = []
        self.unsent_since = 0.0
        self.unsent_lock = threading.Lock()  # the loop's thread and the guard flush them, in order
        self.on_loop = threading.Event()

    def serve(self) -> None:
        """Calls until the worker goes away; on the executors' loop while they turn out async."""
        threading.Thread(target=self._read, name="coda-child-reader", daemon=True).start()
        threading.Thread(target=self._deliver, name="coda-child-sender", daemon=True).start()
        threading.Thread(target=self._guard, name="coda-child-guard", daemon=True).start()
        while (request := self.pending.get()) is not None:
            outcome = self._start(request)
            if outcome is None:
                continue
            self._finish(*outcome)
            if inspect.isawaitable(outcome[1]) and not resolve_awaitable(self._serve_on_loop()):
                return

    async def _serve_on_loop(self) -> bool:
        """The queued calls, awaited on the loop they run on; back to the main thread when none is queued.

        An answer (and the next run's start notice) leaves once the next run
        has started and first awaits, so the worker wakes, and takes a core,
        while the device runs.  False once the worker has gone away.
        """
        loop = asyncio.get_running_loop()

        def defer(message: Any) -> None:
            with self.unsent_lock:
                if not self.unsent:
                    self.unsent_since = time.monotonic()
                    loop.call_soon(self._flush)
                self.unsent.append(message)

        self.post = defer
        self.on_loop.set()
        try:
            while True:
                try:
                    request = self.pending.get_nowait()
                except queue.Empty:
                    return True
                if request is None:
                    return False
                outcome = self._start(request)
                if outcome is None:
                    continue
                tag, value = outcome
                if not inspect.isawaitable(value):  # a plain call ran on the loop: give the calls back
                    self._finish(tag, value)
                    return True
                try:
                    raw = await value.raw() if isinstance(value, Awaiting) else await value
                except BaseException as exc:  # SystemExit and KeyboardInterrupt: the run's failures
                    answer: Any = (tag, "error", describe_error(exc))
                else:  # checked once the next run started
                    answer = functools.partial(self._checked, tag, value, raw)
                self._flush()  # a run that never awaited held back what came before it: no further
                self.running.clear()
                self.post(answer)
        finally:
            self.on_loop.clear()
            self.post = self.outbox.put
            self._flush()

    def _flush(self) -> None:
        """Send what waited for the next run to start (an answer still to be checked is checked now)."""
        with self.unsent_lock:
            for message in self.unsent:
                self.outbox.put(message() if callable(message) else message)
            self.unsent.clear()

    def _guard(self) -> None:
        """While calls run on the loop, send what waited :data:`DEFER_MAX_SEC` for a run's first await.

        A run that computes before it first awaits must not hold back the
        answer of the run before it (the worker watches that one's time limit)
        or its own start notice (the running mark) for longer than that.
        """
        while True:
            self.on_loop.wait()
            time.sleep(DEFER_MAX_SEC)
            if self.unsent and time.monotonic() - self.unsent_since >= DEFER_MAX_SEC:
                self._flush()

    @staticmethod
    def _checked(tag: int, value: Any, raw: Any) -> tuple[Any, ...]:
        """The answer to ``tag`` from the unchecked ``raw`` an async call gave."""
        try:
            return (tag, "ok", value.check(raw) if isinstance(value, Awaiting) else raw)
        except BaseException as exc:  # a check's failure is the run's
            return (tag, "error", describe_error(exc))

    def _start(self, request: _Request) -> tuple[int, Any] | None:
        """Start ``request`` unless it was withdrawn: its tag and its answer (or the awaitable of it)."""
        tag, method, args, notify = request
        with self.turn:
            if tag in self.withdrawn:
                self.withdrawn.discard(tag)
                return None
            self.running[:] = [tag]
            self.reached = tag  # a withdrawal from now on is too late, and is not answered
        if notify:
            self.post(("started", tag))
        try:
            return tag, self.calls[method](self.executor, *args)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a run are its failures too
            self.running.clear()
            self.post((tag, "error", describe_error(exc)))
            return None

    def _finish(self, tag: int, value: Any) -> None:
        """Answer the call ``tag`` with ``value``, awaited on the executors' loop when it is awaitable."""
        try:
            reply: tuple[Any, ...] = (tag, "ok", resolve_awaitable(value))
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a run are its failures too
            reply = (tag, "error", describe_error(exc))
        self.running.clear()
        self.post(reply)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self.sending:
            self.conn.send(message)

    def _deliver(self) -> None:
        """Answers and start notices, off the runs' thread: a queued run starts before the worker wakes."""
        while True:
            message = self.outbox.get()
            try:
                self._send(message)
            except (OSError, ValueError):  # the worker is gone: the reader ends the child
                return
            except Exception as exc:  # the result cannot be pickled: the call failed
                error = f"its result could not be sent to the worker: {describe_error(exc)}"
                self._send((message[0], "error", error))

    def _read(self) -> None:
        while True:
            try:
                kind, tag, *rest = self.conn.recv()
            except (EOFError, OSError):  # the worker is gone: nothing will read a reply
                self.pending.put(None)
                return
            if kind == "call":
                self.pending.put((tag, rest[0], rest[1], rest[2]))
            elif kind == "cancel" and tag in self.running:
                asked = threading.Thread(target=self.cancel, args=(self.executor,), name="coda-cancel")
                asked.daemon = True
                asked.start()
            elif kind == "withdraw":
                with self.turn:
                    if tag <= self.reached or tag in self.withdrawn:
                        continue
                    self.withdrawn.add(tag)
                with contextlib.suppress(OSError, ValueError):
                    self._send((tag, "withdrawn", None))
