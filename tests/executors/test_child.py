"""The executor's child with an async executor: queued runs follow each other on the executors' loop."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from typing import Any

import pytest

from coda_bridge.executors.isolation import ExecutorProcess, ExecutorProcesses

#: Longest wait for a child's answer (a fork and a call take milliseconds).
ANSWER_SEC = 10.0
#: A first run long enough for the worker to queue others behind it.
FIRST_RUN_SEC = 0.3
#: How long a run computes before its first await.
COMPUTE_SEC = 3.0
#: The most a busy machine may add to the child's bound on holding an answer back (DEFER_MAX_SEC).
LATE_SEC = 1.5


class _AsyncExecutor:
    """``run(mode)`` is async, except ``plain`` and ``plain-wait``; answers name the loop's task it ran in.

    ``first`` sleeps a little, ``wait`` until cancelled, ``exit`` raises SystemExit.
    """

    def __init__(self) -> None:
        self.serials: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
        self.numbers = itertools.count()
        self.cancelled: asyncio.Event | None = None
        self.plain_cancelled = threading.Event()

    def run(self, mode: str) -> Any:
        if mode == "plain":
            return {"pid": os.getpid(), "thread": threading.current_thread().name}
        if mode == "plain-wait":
            return "cancelled" if self.plain_cancelled.wait(ANSWER_SEC) else "not cancelled"
        return self._run(mode)

    async def _run(self, mode: str) -> Any:
        task = asyncio.current_task()
        assert task is not None
        if task not in self.serials:
            self.serials[task] = next(self.numbers)
        if mode == "first":
            await asyncio.sleep(FIRST_RUN_SEC)
        if mode == "wait":
            self.cancelled = asyncio.Event()
            try:
                await asyncio.wait_for(self.cancelled.wait(), ANSWER_SEC)
            except TimeoutError:
                return "not cancelled"
            return "cancelled"
        if mode == "exit":
            raise SystemExit(4)
        if mode == "stamp":
            await asyncio.sleep(FIRST_RUN_SEC)
            return time.time()
        if mode == "compute":  # works before its first await: the loop is held
            time.sleep(COMPUTE_SEC)
            await asyncio.sleep(0)
        return {"pid": os.getpid(), "task": self.serials[task]}

    async def cancel_current_job(self) -> None:
        self.plain_cancelled.set()
        if self.cancelled is not None:
            self.cancelled.set()


def _start(executor: Any, mode: str) -> Any:
    return executor.run(mode)


def _cancel(executor: Any) -> None:
    from coda_bridge.executors.base import cancel

    cancel(executor)


@pytest.fixture
def processes() -> ExecutorProcesses:
    return ExecutorProcesses(_AsyncExecutor, {"run": _start}, _cancel, 1)


def _queue(processes: ExecutorProcesses, modes: list[str]) -> list[tuple[ExecutorProcess, int]]:
    """The first mode in a taken child, the rest queued behind it; each child and tag."""
    first = processes.take()
    calls = [(first, first.call("run", modes[0]))]
    for mode in modes[1:]:
        lane = processes.queue_behind()
        assert lane is first
        calls.append((lane, lane.call("run", mode, notify=True)))
    return calls


def _answers(processes: ExecutorProcesses, calls: list[tuple[ExecutorProcess, int]]) -> list[Any]:
    answers = []
    for child, tag in calls:
        answers.append(child.reply(ANSWER_SEC, tag))
        processes.give_back(child)
    return answers


def test_queued_async_runs_follow_each_other_in_one_step_of_the_loop(processes: ExecutorProcesses) -> None:
    # Given an async run, and two runs queued behind it in its child
    calls = _queue(processes, ["first", "ok", "ok"])

    # When all three have answered
    first, second, third = _answers(processes, calls)

    # Then the queued ones ran one after the other in one task of the loop: nothing woke between them
    assert first[0] == second[0] == third[0] == "ok", (first, second, third)
    assert second[1]["task"] == third[1]["task"]
    assert second[1]["pid"] == third[1]["pid"] != os.getpid()


def test_an_async_cancel_reaches_a_queued_async_run(processes: ExecutorProcesses) -> None:
    # Given a queued run that waits on the loop until its cancel
    calls = _queue(processes, ["first", "wait"])
    child, tag = calls[1]
    assert child.started(tag, ANSWER_SEC) is True

    # When the worker cancels it
    child.cancel(tag)

    # Then the executor's async cancel ran on the loop beside it, and the run ended
    assert _answers(processes, calls)[1] == ("ok", "cancelled")


def test_a_plain_run_among_async_ones_gives_the_calls_back_to_the_main_thread(
    processes: ExecutorProcesses,
) -> None:
    # Given an async run, with a plain run queued behind it
    calls = _queue(processes, ["first", "plain"])
    assert [answer[0] for answer in _answers(processes, calls)] == ["ok", "ok"]

    # When the next plain run waits for its cancel, which the executor makes async
    child = processes.take()
    tag = child.call("run", "plain-wait", notify=True)
    assert child.started(tag, ANSWER_SEC) is True
    child.cancel(tag)

    # Then the loop was free for the cancel: the run ended cancelled
    assert child.reply(ANSWER_SEC, tag) == ("ok", "cancelled")
    processes.give_back(child)


def test_an_async_run_raising_system_exit_fails_and_the_child_serves_the_next(
    processes: ExecutorProcesses,
) -> None:
    # Given a queued async run that raises SystemExit, and another queued behind it
    calls = _queue(processes, ["first", "exit", "ok"])

    # When all have answered
    first, failed, after = _answers(processes, calls)

    # Then the one failed with its own error, and the same child ran the next
    assert failed == ("error", "SystemExit: 4")
    assert after[0] == "ok" and after[1]["pid"] == first[1]["pid"]


def test_a_run_computing_before_its_first_await_does_not_hold_back_the_answer_before_it(
    processes: ExecutorProcesses,
) -> None:
    # Given a run, and one queued behind it that computes for seconds before it first awaits
    calls = _queue(processes, ["stamp", "compute"])
    (first, first_tag), (second, second_tag) = calls

    # When the first run ends
    answer = first.reply(ANSWER_SEC, first_tag)
    arrived = time.time()

    # Then its answer, and the next run's start notice, reached the worker while the next one computed
    assert isinstance(answer, tuple) and answer[0] == "ok", answer
    assert arrived - answer[1] < LATE_SEC
    assert second.started(second_tag, LATE_SEC) is True
    assert second.reply(0.0, second_tag) is None  # still computing
    last = second.reply(ANSWER_SEC + COMPUTE_SEC, second_tag)
    assert isinstance(last, tuple) and last[0] == "ok", last
    processes.give_back(first)
    processes.give_back(second)
