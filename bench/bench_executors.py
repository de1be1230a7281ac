"""Executors for the benchmarks, put on PYTHONPATH by the scripts (``CODA_EXECUTOR_FACTORY``).

- ``bench_executors:create_sleep_executor``: every job takes ``BENCH_EXECUTOR_MS``
  milliseconds (default 20) of wall time, without holding the CPU, and answers the
  no-op result; any number may run at once (no device lock).
- ``bench_executors:create_stamp_executor``: an awaited sleep of ``BENCH_EXECUTOR_MS``,
  each run appending its own start and end time to ``BENCH_STAMP_FILE`` (``bench/duty_cycle.py``).
"""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace
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


class StampExecutor:
    """Every run is an awaited sleep (a driver waiting on hardware) stamped with its own start and end.

    The stamps (``time.time()``) are appended to a file after the end, so the
    write counts as a gap, not as busy time; ``bench/duty_cycle.py`` reads
    them.  Each process that runs it keeps the file open (``O_APPEND``, one
    ``write`` per run): opening and closing it every run cost ~0.1 ms of every
    gap, measurement rather than runtime.  The result has attributes, so
    coda-node 0.1.1 takes it as well.
    """

    def __init__(self, milliseconds: float, path: str) -> None:
        self.seconds = milliseconds / 1000
        self.path = path
        self._fd: tuple[int, int] | None = None  # (pid, descriptor): a forked child opens its own

    def _stamps(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        return self._fd[1]

    async def run(self, ir: Any, shots: int) -> SimpleNamespace:
        started = time.time()
        await asyncio.sleep(self.seconds)
        ended = time.time()
        os.write(self._stamps(), f"{started:.6f} {ended:.6f}\n".encode())
        return SimpleNamespace(
            counts={"0" * len(ir.measurements): shots},
            execution_time_ms=(ended - started) * 1000,
            shots_completed=shots,
        )


def create_stamp_executor() -> StampExecutor:
    return StampExecutor(float(os.environ.get("BENCH_EXECUTOR_MS", "20")), os.environ["BENCH_STAMP_FILE"])
