"""An executor for the pipeline tests: the circuit's ``metadata.source_hash`` picks its behaviour.

- ``ok:<tag>``: answer at once with all-zero counts
- ``sleep:<sec>:<tag>``: take that long (stopping early on cancel)
- ``raise:<tag>``: raise an exception
- ``wrongtype:<tag>``: return a string instead of a result
- ``hang:<tag>``: never return (until cancelled)
- ``exit:<tag>``: end the process at once (``os._exit(1)``)
- ``exitonce:<tag>``: end the process on the tag's first run only; answer as ``ok`` on the next
- ``segv:<tag>``: crash the process (a read of address 0: SIGSEGV)
- ``stuck:<tag>``: never return, ignore the cancel, and make ``cancel_current_job()`` block too

Every run and every cancel is appended to ``$PIPELINE_TEST_EXECUTOR_LOG``, so a
test can count executions per tag.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any


def _log(line: str) -> None:
    path = os.environ.get("PIPELINE_TEST_EXECUTOR_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class PipelineTestExecutor:
    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._stuck = False

    def run(self, ir: Any, shots: int) -> Any:
        mode, _, rest = ir.metadata.source_hash.partition(":")
        self._cancel.clear()
        _log(f"run {ir.metadata.source_hash}")
        if mode == "sleep":
            seconds = float(rest.split(":")[0])
            if self._cancel.wait(seconds):
                raise RuntimeError("cancelled")
        elif mode == "raise":
            raise RuntimeError("device on fire")
        elif mode == "wrongtype":
            return "not a result"
        elif mode == "hang":
            self._cancel.wait(3600)
            raise RuntimeError("cancelled")
        elif mode == "exit":
            os._exit(1)
        elif mode == "exitonce":
            _crash_once(rest)
        elif mode == "segv":
            ctypes.string_at(0)
        elif mode == "stuck":
            self._stuck = True
            while True:
                time.sleep(1)
        return {
            "counts": {"0" * len(ir.measurements): shots},
            "execution_time_ms": 1.0,
            "shots_completed": shots,
        }

    def cancel_current_job(self) -> None:
        _log("cancel")
        if self._stuck:
            threading.Event().wait()
        self._cancel.set()


def _crash_once(tag: str) -> None:
    """End the process unless a run of ``tag`` did already (a marker file beside the log says so)."""
    log = os.environ.get("PIPELINE_TEST_EXECUTOR_LOG")
    if not log:
        return
    marker = f"{log}.crashed-{tag}"
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


def create_executor() -> PipelineTestExecutor:
    return PipelineTestExecutor()


class BatchingTestExecutor(PipelineTestExecutor):
    """The same, with ``batch_run``; a job tagged ``batchfail`` makes the whole batch call raise."""

    def batch_run(self, jobs: list[tuple[Any, int]]) -> list[Any]:
        _log(f"batch {len(jobs)}")
        if any(ir.metadata.source_hash.startswith("batchfail") for ir, _ in jobs):
            raise RuntimeError("batch call failed")
        return [self.run(ir, shots) for ir, shots in jobs]


def create_batch_executor() -> BatchingTestExecutor:
    return BatchingTestExecutor()
