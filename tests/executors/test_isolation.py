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


class _Executor:
    """``run(mode)``: ``ok``, ``raise``, ``exit``, ``segv``, ``wait`` (until cancelled) or ``stuck``."""

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
    child.call("run", "wait")
    assert child.reply(0.2) is None  # running

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
