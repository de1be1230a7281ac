"""Executors for the benchmarks, put on PYTHONPATH by the scripts (``CODA_EXECUTOR_FACTORY``).

- ``bench_executors:create_sleep_executor``: every job takes ``BENCH_EXECUTOR_MS``
  milliseconds (default 20) of wall time, without holding the CPU, and answers the
  no-op result; any number may run at once (no device lock).
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
