"""Executors: the contract, the built-in no-op and simulator executors, and their resolution."""

from __future__ import annotations

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
from .simulator import StateVectorExecutor

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
