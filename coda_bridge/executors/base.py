"""The executor contract (PROTOCOL.md 4.4) and the calls that drive any executor through it.

Executors may be plain or ``async def``; coroutines all run on one long-lived
event loop of the process, whatever thread calls, so an executor holding async
resources (sessions, sockets) keeps them usable from one job to the next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Protocol, runtime_checkable

from ..circuits.ir import Circuit
from ..errors import CodaError, ExecutorError

__all__ = [
    "CANCEL_WAIT_SEC",
    "Awaiting",
    "ExecutionResult",
    "Executor",
    "call_batch_run",
    "call_run",
    "cancel",
    "coerce_result",
    "has_batch",
    "resolve_awaitable",
    "start_batch_run",
    "start_run",
]

logger = logging.getLogger(__name__)

#: How long :func:`cancel` waits for an async ``cancel_current_job``.
CANCEL_WAIT_SEC = 5.0
#: Longest excerpt of an executor's own error text or value quoted in a message.
QUOTE_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What one run produced: bitstring counts, wall time, and shots actually taken."""

    counts: dict[str, int]
    execution_time_ms: float
    shots_completed: int


@runtime_checkable
class Executor(Protocol):
    """Anything with ``run(ir, shots)``; ``run`` may be ``async def``.

    ``batch_run(jobs)`` and ``cancel_current_job()`` are optional and looked up by name.
    """

    def run(self, ir: Circuit, shots: int) -> Any:
        """Run ``ir`` for ``shots`` shots; returns (or awaits to) a result with counts."""


def _quote(value: object) -> str:
    """A short one-line ``repr`` for error messages."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_MAX_CHARS else text[: QUOTE_MAX_CHARS - 3] + "..."


def _describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line, cut short."""
    text = " ".join(str(exc).split())
    if len(text) > QUOTE_MAX_CHARS:
        text = text[: QUOTE_MAX_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- results


def _field(obj: object, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` otherwise; missing is an :class:`ExecutorError`."""
    if isinstance(obj, Mapping):
        if name not in obj:
            raise ExecutorError(f"executor result has no '{name}' key: {_quote(obj)}")
        return obj[name]
    if not hasattr(obj, name):
        raise ExecutorError(
            f"executor returned {type(obj).__name__} without '{name}'; expected a result object"
        )
    return getattr(obj, name)


def coerce_result(obj: object, circuit: Circuit, shots: int) -> ExecutionResult:
    """Check an executor's answer against the contract and turn it into an :class:`ExecutionResult`."""
    if obj is None:
        raise ExecutorError("executor returned None instead of a result")
    raw_counts = _field(obj, "counts")
    raw_time = _field(obj, "execution_time_ms")
    raw_shots = _field(obj, "shots_completed")

    if not isinstance(raw_counts, Mapping):
        raise ExecutorError(f"executor result counts must be a mapping, got {type(raw_counts).__name__}")
    width = len(circuit.measurements)
    counts: dict[str, int] = {}
    for key, value in raw_counts.items():
        if not isinstance(key, str) or len(key) != width or key.strip("01"):
            raise ExecutorError(
                f"executor result count key {_quote(key)} is not a bitstring of {width} bit(s) "
                f"(one per measurement)"
            )
        if not isinstance(value, Integral) or isinstance(value, bool):
            raise ExecutorError(f"executor result count for {key!r} is not an integer: {_quote(value)}")
        if value < 0:
            raise ExecutorError(f"executor result count for {key!r} is negative: {int(value)}")
        counts[key] = int(value)

    if not isinstance(raw_time, Real) or isinstance(raw_time, bool):
        raise ExecutorError(f"executor result execution_time_ms is not a number: {_quote(raw_time)}")
    elapsed_ms = float(raw_time)
    if not math.isfinite(elapsed_ms) or elapsed_ms < 0:
        raise ExecutorError(f"executor result execution_time_ms must be finite and >= 0, got {elapsed_ms}")

    if not isinstance(raw_shots, Integral) or isinstance(raw_shots, bool):
        raise ExecutorError(f"executor result shots_completed is not an integer: {_quote(raw_shots)}")
    shots_completed = int(raw_shots)
    if shots_completed < 0:
        raise ExecutorError(f"executor result shots_completed is negative: {shots_completed}")

    total = sum(counts.values())
    if total != shots_completed:
        logger.warning(
            "executor counts sum to %d but shots_completed is %d (%d requested)",
            total,
            shots_completed,
            shots,
        )
    return ExecutionResult(counts=counts, execution_time_ms=elapsed_ms, shots_completed=shots_completed)


# --------------------------------------------------------------------------- the event loop


class _LoopThread:
    """One event loop on a daemon thread, started on first use and kept for the process's life.

    Jobs are run from short-lived threads; coroutines must still meet the loop their
    executor's async resources were created on, so every one is sent to this loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, (re)started when missing or inherited across a fork."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if self._loop is None or not alive:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name="coda-executor-loop", daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop's own thread (which must never block on it)."""
        return self._thread is threading.current_thread()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        """The loop thread's body: signal readiness once the loop runs, then serve forever."""
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()


_loop_thread = _LoopThread()


def resolve_awaitable(value: Any, *, timeout_sec: float | None = None) -> Any:
    """``value`` itself, or what it awaits to when it is awaitable, run on the executors' loop."""
    if not inspect.isawaitable(value):
        return value
    if _loop_thread.in_loop_thread():
        _close_awaitable(value)
        raise ExecutorError("an async executor was called from its own event loop; await it there instead")
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(value), _loop_thread.loop())
    try:
        return future.result(timeout=timeout_sec)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


async def _as_coroutine(value: Awaitable[Any]) -> Any:
    """Any awaitable as a coroutine, which every loop method accepts."""
    return await value


def _close_awaitable(value: object) -> None:
    """Close a coroutine that will never run, so Python does not warn that it was never awaited."""
    close = getattr(value, "close", None)
    if (inspect.iscoroutine(value) or isinstance(value, Awaiting)) and callable(close):
        close()


# --------------------------------------------------------------------------- calls


def _begin(executor: object, method: str, *args: Any) -> Any:
    """``executor.method(*args)``: its value or awaitable; foreign errors become ExecutorError."""
    func = getattr(executor, method, None)
    if not callable(func):
        raise ExecutorError(f"executor {type(executor).__name__} has no {method}() method")
    try:
        return func(*args)
    except CodaError:
        raise
    except Exception as exc:
        raise ExecutorError(f"executor {method}() failed: {_describe_exception(exc)}") from exc


class Awaiting:
    """A started async call: the executor's awaitable, and the check its value goes through.

    Awaiting it gives the checked answer; :meth:`raw` and :meth:`check` apart let a
    caller start the device's next run before it checks this one's answer.
    Closing it closes the executor's coroutine.
    """

    __slots__ = ("_check", "_method", "_value")

    def __init__(self, value: Awaitable[Any], method: str, check: Callable[[Any], Any]) -> None:
        self._value, self._method, self._check = value, method, check

    def __await__(self) -> Generator[Any, None, Any]:
        return self._finish().__await__()

    async def _finish(self) -> Any:
        return self._check(await self.raw())

    async def raw(self) -> Any:
        """What the executor's awaitable gives, unchecked; its foreign errors become ExecutorError."""
        try:
            return await self._value
        except CodaError:
            raise
        except Exception as exc:  # foreign errors become ExecutorError, as a plain call's do
            raise ExecutorError(f"executor {self._method}() failed: {_describe_exception(exc)}") from exc

    def check(self, value: Any) -> Any:
        """The answer ``value`` (from :meth:`raw`) makes, checked against the contract."""
        return self._check(value)

    def close(self) -> None:
        """Never to be awaited: close the executor's coroutine, so Python does not warn about it."""
        _close_awaitable(self._value)


def start_run(executor: object, circuit: Circuit, shots: int) -> Any:
    """Start one run: its checked :class:`ExecutionResult`, or a coroutine that awaits to it (an async run).

    Whoever awaits it decides on which loop: the child of an async executor
    awaits it on the loop it already runs (no thread hop between two runs).
    """
    raw = _begin(executor, "run", circuit, shots)
    if inspect.isawaitable(raw):
        return Awaiting(raw, "run", lambda value: coerce_result(value, circuit, shots))
    return coerce_result(raw, circuit, shots)


def call_run(executor: object, circuit: Circuit, shots: int) -> ExecutionResult:
    """Run one circuit on ``executor`` (plain or async ``run``) and check its result."""
    result: ExecutionResult = resolve_awaitable(start_run(executor, circuit, shots))
    return result


def has_batch(executor: object) -> bool:
    """Whether ``executor`` offers the optional ``batch_run``."""
    return callable(getattr(executor, "batch_run", None))


def start_batch_run(executor: object, jobs: Sequence[tuple[Circuit, int]]) -> Any:
    """Start a batch: one checked result per ``(circuit, shots)`` job, in order, or an awaitable of them.

    Via ``batch_run`` when offered, else one ``run`` after another.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if not has_batch(executor):
        return _run_each(executor, jobs)
    raw = _begin(executor, "batch_run", jobs)
    if inspect.isawaitable(raw):
        return Awaiting(raw, "batch_run", lambda value: _check_batch(value, jobs))
    return _check_batch(raw, jobs)


def _run_each(executor: object, jobs: list[tuple[Circuit, int]]) -> Any:
    """The jobs one ``run`` at a time: the results, or a coroutine from the first async run on."""
    results: list[ExecutionResult] = []
    for circuit, shots in jobs:
        outcome = start_run(executor, circuit, shots)
        if inspect.isawaitable(outcome):
            return _run_rest(outcome, executor, jobs, results)
        results.append(outcome)
    return results


async def _run_rest(
    first: Awaitable[ExecutionResult],
    executor: object,
    jobs: list[tuple[Circuit, int]],
    results: list[ExecutionResult],
) -> list[ExecutionResult]:
    results.append(await first)
    while len(results) < len(jobs):
        outcome = start_run(executor, *jobs[len(results)])
        results.append(await outcome if inspect.isawaitable(outcome) else outcome)
    return results


def _check_batch(raw: object, jobs: list[tuple[Circuit, int]]) -> list[ExecutionResult]:
    """``batch_run``'s answer checked: a list of one result per job, each checked against its job."""
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        raise ExecutorError(f"executor batch_run() returned {type(raw).__name__}, expected a list of results")
    if len(raw) != len(jobs):
        raise ExecutorError(f"executor batch_run() returned {len(raw)} result(s) for {len(jobs)} job(s)")
    results = []
    for index, (item, (circuit, shots)) in enumerate(zip(raw, jobs, strict=True)):
        try:
            results.append(coerce_result(item, circuit, shots))
        except ExecutorError as exc:
            raise ExecutorError(f"batch_run() result {index}: {exc}") from exc
    return results


def call_batch_run(executor: object, jobs: Sequence[tuple[Circuit, int]]) -> list[ExecutionResult]:
    """One checked result per ``(circuit, shots)`` job, in order; via ``batch_run`` when offered."""
    results: list[ExecutionResult] = resolve_awaitable(start_batch_run(executor, jobs))
    return results


def cancel(executor: object) -> bool:
    """Ask ``executor`` to stop its current job; True when it has ``cancel_current_job``.

    Errors from the executor are logged, never raised: a failed cancel must not
    take down the caller watching for cancellations.
    """
    func = getattr(executor, "cancel_current_job", None)
    if not callable(func):
        return False
    try:
        resolve_awaitable(func(), timeout_sec=CANCEL_WAIT_SEC)
    except Exception as exc:  # logged by design: a failed cancel is not fatal
        logger.warning("executor cancel_current_job() failed: %s", _describe_exception(exc))
    return True
