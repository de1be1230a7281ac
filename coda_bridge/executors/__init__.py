"""Executors: the contract, the built-in no-op and simulator executors, and their resolution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    ExecutionResult,
    Executor,
    call_batch_run,
    call_run,
    cancel,
    coerce_result,
    has_batch,
)
from .noop import NoopExecutor
from .resolve import resolve_executor

if TYPE_CHECKING:
    from .simulator import StateVectorExecutor


def __getattr__(name: str) -> Any:
    """The state-vector simulator (and numpy) load only when it is asked for."""
    if name == "StateVectorExecutor":
        from .simulator import StateVectorExecutor  # noqa: PLC0415 - numpy loads only when the simulator is asked for

        return StateVectorExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ExecutionResult",
    "Executor",
    "NoopExecutor",
    "StateVectorExecutor",
    "call_batch_run",
    "call_run",
    "cancel",
    "coerce_result",
    "has_batch",
    "resolve_executor",
]
