"""The no-op executor: all-zero counts, only when named (``CODA_EXECUTOR_FACTORY=noop``), for wiring tests."""

from __future__ import annotations

import time

from ..circuits.ir import Circuit
from .base import ExecutionResult

__all__ = ["NoopExecutor"]


class NoopExecutor:
    """Runs nothing and reports every shot as all zeros: ``{"0" * len(measurements): shots}``."""

    def run(self, ir: Circuit, shots: int) -> ExecutionResult:
        """The all-zeros answer for ``ir``, timed like a real run."""
        started = time.perf_counter()
        counts = {"0" * len(ir.measurements): shots}
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return ExecutionResult(counts=counts, execution_time_ms=elapsed_ms, shots_completed=shots)

    def batch_run(self, jobs: list[tuple[Circuit, int]]) -> list[ExecutionResult]:
        """One all-zeros answer per job, in order (so the pipeline's batching is exercised too)."""
        return [self.run(ir, shots) for ir, shots in jobs]

    def __repr__(self) -> str:
        return "NoopExecutor()"
