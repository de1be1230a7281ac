"""A run's way to its executor child (no Redis): an idle child that died gives way to a fresh one."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace
from typing import Any

from coda_bridge.devtools.stack import wait_until
from coda_bridge.executors.isolation import ExecutorProcesses
from coda_bridge.ops.proctree import alive
from coda_bridge.pipeline.executor_run import ExecutorRun


class _Executor:
    def run(self) -> int:
        return os.getpid()


def _call(executor: Any) -> Any:
    return executor.run()


def _host() -> Any:
    return SimpleNamespace(processes=ExecutorProcesses(_Executor, {"run": _call}, lambda executor: None, 1))


def _finished(run: ExecutorRun) -> ExecutorRun:
    run.start()
    run.join(10)
    assert not run.is_alive()
    return run


def test_a_child_that_died_while_idle_gives_way_to_a_fresh_one() -> None:
    # Given a child kept after a run, then killed while idle (the OOM killer, an operator)
    host = _host()
    first = _finished(ExecutorRun(host, "run"))
    os.kill(first.result, signal.SIGKILL)
    wait_until(lambda: not alive(first.result), 10, "the idle child to die")

    # When the next job runs (once more if its call met the dying child: a run whose process died runs again)
    second = _finished(ExecutorRun(host, "run"))
    if second.died is not None:
        second = _finished(ExecutorRun(host, "run"))

    # Then it ran in a fresh child, with no error
    assert second.error is None and second.died is None
    assert second.result not in (first.result, os.getpid())
