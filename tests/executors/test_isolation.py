"""Executor child processes, really forked: answers, deaths named by their exit status, cancels, kills."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coda_bridge.errors import ExecutorError
from coda_bridge.executors.isolation import Died, ExecutorProcess, ExecutorProcesses

#: Longest wait for a child's answer (a fork and a call take milliseconds).
ANSWER_SEC = 10.0
#: A run long enough for the worker to queue another behind it.
SHORT_RUN_SEC = 0.3


class _Executor:
    """``run(mode)``: ``ok``, ``raise``, ``exit``, ``segv``, ``wait`` (until cancelled) or ``stuck``.

    ``stamp`` answers the time it started, after a short run.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def run(self, mode: str) -> Any:
        if mode == "raise":
            raise ExecutorError("device on fire")
        if mode == "exit":
            os._exit(3)
        if mode == "segv":
            ctypes.string_at(0)
        if mode == "wait":
            return "cancelled" if self.cancelled.wait(ANSWER_SEC) else "not cancelled"
        if mode == "stuck":
            while True:
                time.sleep(1)
        if mode == "stamp":
            started = time.monotonic()
            time.sleep(SHORT_RUN_SEC)
            return started
        return {"pid": os.getpid()}

    def cancel_current_job(self) -> None:
        self.cancelled.set()


def _call(executor: Any, mode: str) -> Any:
    return executor.run(mode)


def _cancel(executor: Any) -> None:
    executor.cancel_current_job()


@pytest.fixture
def processes() -> ExecutorProcesses:
    return ExecutorProcesses(_Executor, {"run": _call}, _cancel, 1)


def _answer(child: ExecutorProcess) -> Any:
    answer = child.reply(ANSWER_SEC)
    assert answer is not None, "no answer"
    return answer


def test_a_call_is_answered_from_a_child_that_is_kept_for_the_next_run(processes: ExecutorProcesses) -> None:
    # Given a child that answered a call and was given back
    child = processes.take()
    child.call("run", "ok")
    first = _answer(child)
    processes.give_back(child)

    # When the next run takes a child
    again = processes.take()
    again.call("run", "ok")

    # Then it is the same child process, not the worker
    assert first[0] == "ok" and first[1]["pid"] not in (os.getpid(), None)
    # and the OOM killer would pick it before the worker
    oom_score_adj = Path(f"/proc/{first[1]['pid']}/oom_score_adj").read_text()
    assert int(oom_score_adj) == 1000
    assert _answer(again) == first
    processes.discard(again)


def test_an_error_from_the_run_is_answered_as_text(processes: ExecutorProcesses) -> None:
    child = processes.take()
    child.call("run", "raise")
    assert _answer(child) == ("error", "device on fire")
    processes.discard(child)


@pytest.mark.parametrize(("mode", "how"), [("exit", "exit code 3"), ("segv", "signal 11 (SIGSEGV)")])
def test_a_child_that_dies_is_reported_with_its_exit_status(
    processes: ExecutorProcesses, mode: str, how: str
) -> None:
    # Given a run that ends its process
    child = processes.take()
    child.call("run", mode)

    # Then the answer names how the child died, and the next run gets a fresh child
    assert _answer(child) == Died(how)
    processes.discard(child)
    fresh = processes.take()
    fresh.call("run", "ok")
    assert _answer(fresh)[1]["pid"] != child.pid
    processes.discard(fresh)


def test_a_cancel_reaches_the_executor_in_the_child_while_it_runs(processes: ExecutorProcesses) -> None:
    child = processes.take()
    tag = child.call("run", "wait", notify=True)
    assert child.started(tag, ANSWER_SEC) is True  # a cancel before the run starts is not for it

    child.cancel()

    assert _answer(child) == ("ok", "cancelled")
    processes.discard(child)


def test_a_stuck_child_is_killed_and_its_slot_given_back(processes: ExecutorProcesses) -> None:
    # Given a run that never returns, holding the only slot
    child = processes.take()
    child.call("run", "stuck")
    assert child.reply(0.2) is None

    # When it is discarded
    how = processes.discard(child)

    # Then it was killed, and the slot serves a fresh child at once
    assert how == "signal 9 (SIGKILL)"
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    fresh = processes.take()
    fresh.call("run", "ok")
    assert _answer(fresh)[0] == "ok"
    processes.discard(fresh)


def test_a_slot_reserved_ahead_is_taken_the_moment_the_run_before_gives_it_back(
    processes: ExecutorProcesses,
) -> None:
    # Given a run holding the only slot, and a second thread waiting for it with its job prepared
    first = processes.take()
    first.call("run", "ok")
    assert not processes.reserve(0.05)  # the device is busy: nothing reserved yet
    reserved = threading.Event()
    waiter = threading.Thread(target=lambda: processes.reserve(ANSWER_SEC) and reserved.set())
    waiter.start()

    # When the run answers and its child is given back
    assert _answer(first) == ("ok", {"pid": first.pid})
    processes.give_back(first)

    # Then the waiting thread holds the slot, and no other thread can take one
    waiter.join(ANSWER_SEC)
    assert reserved.is_set()
    assert not processes.slots.acquire(timeout=0.05)
    processes.slots.release()  # the waiting thread's run is over (it ends with the test)
    processes.discard(processes.take())


def test_a_slot_reserved_and_given_back_unused_frees_the_device(processes: ExecutorProcesses) -> None:
    # Given a slot reserved for a job prepared ahead
    assert processes.reserve(ANSWER_SEC)

    # When the job goes back unstarted (a drain, a cancel)
    processes.unreserve()

    # Then the next run takes the slot at once, and the reservation is not used twice
    child = processes.take()
    child.call("run", "ok")
    assert _answer(child) == ("ok", {"pid": child.pid})
    processes.give_back(child)
    processes.unreserve()  # nothing reserved: no slot is released twice
    assert processes.reserve(ANSWER_SEC)
    processes.unreserve()
    processes.discard(processes.take())


def test_a_child_outlives_the_worker_thread_that_forked_it(processes: ExecutorProcesses) -> None:
    # Given a child forked for a thread that then ends (as a worker's thread that prepared a job ahead
    # ends first when the worker stops, while another thread runs a job on the same kept child)
    taken: list[ExecutorProcess] = []

    def prepare() -> None:
        child = processes.take()
        child.call("run", "ok")  # answered: the child has set itself up (its parent-death signal too)
        assert _answer(child)[0] == "ok"
        taken.append(child)

    forking = threading.Thread(target=prepare)
    forking.start()
    forking.join()
    [child] = taken

    # When another thread calls it after that
    child.call("run", "ok")

    # Then it answers: the child's parent-death signal is the process's end, not that thread's
    answer = _answer(child)
    assert answer[0] == "ok", answer
    processes.discard(child)


def test_a_run_queued_behind_starts_when_the_one_before_ends_without_the_worker(
    processes: ExecutorProcesses,
) -> None:
    # Given a run in the only slot's child, and the next one queued behind it in that child
    first = processes.take()
    first_tag = first.call("run", "stamp")
    lane = processes.queue_behind()
    assert lane is first
    queued_tag = lane.call("run", "stamp", notify=True)

    # When the worker does nothing until the child says the queued run started
    assert lane.started(queued_tag, ANSWER_SEC) is True

    # Then it started after the first ended, from the same child, and each answer is its own
    first_answer = first.reply(ANSWER_SEC, first_tag)
    queued_answer = lane.reply(ANSWER_SEC, queued_tag)
    assert isinstance(first_answer, tuple) and isinstance(queued_answer, tuple)
    assert queued_answer[1] >= first_answer[1] + SHORT_RUN_SEC
    processes.give_back(first)
    assert not processes.slots.acquire(timeout=0.05)  # the queued run still holds the device
    processes.give_back(lane)
    again = processes.take()
    assert again is first  # kept for the next run once both ended
    processes.discard(again)


def test_a_queued_run_withdrawn_before_it_starts_never_runs(processes: ExecutorProcesses) -> None:
    # Given a run waiting for its cancel, and a run queued behind it
    first = processes.take()
    first_tag = first.call("run", "wait")
    lane = processes.queue_behind()
    assert lane is not None
    queued_tag = lane.call("run", "ok", notify=True)
    assert lane.started(queued_tag, 0.2) is False

    # When the worker withdraws the queued run, then the first run ends
    lane.withdraw(queued_tag)
    withdrawn = lane.started(queued_tag, ANSWER_SEC)
    processes.give_back(lane)
    first.cancel(first_tag)

    # Then the queued run was answered withdrawn at once, never started, and the first run was not disturbed
    assert withdrawn == ("withdrawn", None)
    assert first.reply(ANSWER_SEC, first_tag) == ("ok", "cancelled")
    assert first.started(queued_tag, 0.3) is False
    assert first.reply(0.0, queued_tag) is None
    processes.give_back(first)
    assert processes.slots.acquire(timeout=ANSWER_SEC)  # the device is free
    processes.slots.release()
    processes.discard(processes.take())


def test_a_run_queued_in_a_child_that_dies_is_known_never_to_have_started(
    processes: ExecutorProcesses,
) -> None:
    # Given a run that will kill its child, and a run queued behind it
    doomed = processes.take()
    doomed_tag = doomed.call("run", "exit")
    behind = processes.queue_behind()
    assert behind is doomed
    behind_tag = behind.call("run", "ok", notify=True)

    # When the child dies during the first run
    never = behind.started(behind_tag, ANSWER_SEC)

    # Then the queued run learns it never started, both runs end with the child, and a fresh one serves
    assert never == Died("exit code 3")
    assert doomed.reply(ANSWER_SEC, doomed_tag) == Died("exit code 3")
    processes.discard(doomed)
    processes.discard(behind)
    fresh = processes.take()
    assert fresh is not doomed
    fresh.call("run", "ok")
    assert _answer(fresh) == ("ok", {"pid": fresh.pid})
    processes.discard(fresh)
