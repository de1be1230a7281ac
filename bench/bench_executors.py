"""Executors for the benchmarks, put on PYTHONPATH by the scripts (``CODA_EXECUTOR_FACTORY``).

- ``bench_executors:create_sleep_executor``: every job takes ``BENCH_EXECUTOR_MS``
  milliseconds (default 20) of wall time, without holding the CPU, and answers the
  no-op result; any number may run at once (no device lock).
- ``bench_executors:create_stamp_executor``: the same, and each run appends its own
  start and end time to ``BENCH_STAMP_FILE`` (``bench/duty_cycle.py``).
"""

from __future__ import annotations

import os
import time
from typing import Any


class SleepExecutor:
    """Answers all-zero counts after a fixed pause; safe to run concurrently."""

    def __init__(self, milliseconds: float) -> None:
        self.seconds = milliseconds / 1000

    def run(self, ir: Any, shots: int) -> dict[str, Any]:
        started = time.perf_counter()
        time.sleep(self.seconds)
        return {
            "counts": {"0" * len(ir.measurements): shots},
            "execution_time_ms": (time.perf_counter() - started) * 1000,
            "shots_completed": shots,
        }


def create_sleep_executor() -> SleepExecutor:
    return SleepExecutor(float(os.environ.get("BENCH_EXECUTOR_MS", "20")))


class StampExecutor(SleepExecutor):
    """A :class:`SleepExecutor` that appends each run's own start and end (``time.time()``) to a file.

    The stamps are taken inside the run, as the device's owner would see the
    device busy; ``bench/duty_cycle.py`` reads them.  The line is written
    after the end stamp, so its cost counts as a gap, not as busy time.
    """

    def __init__(self, milliseconds: float, path: str) -> None:
        super().__init__(milliseconds)
        self.path = path

    def run(self, ir: Any, shots: int) -> dict[str, Any]:
        started = time.time()
        time.sleep(self.seconds)
        ended = time.time()
        with open(self.path, "a") as stamps:
            stamps.write(f"{started:.6f} {ended:.6f}\n")
        return {
            "counts": {"0" * len(ir.measurements): shots},
            "execution_time_ms": (ended - started) * 1000,
            "shots_completed": shots,
        }


def create_stamp_executor() -> StampExecutor:
    return StampExecutor(float(os.environ.get("BENCH_EXECUTOR_MS", "20")), os.environ["BENCH_STAMP_FILE"])
