"""Executors written for the first runtime, coda-node 0.1.1, run unchanged.

Such an executor expects ``coda_node.server.ir.NativeGateIR``.  It is told
apart by its own code: a class of it (or a base class) comes from a module
that holds something of coda-node's (``from coda_node.server.executor import
ExecutionResult``, say), or its ``run`` is annotated with ``NativeGateIR``.
The ``executor_ir`` setting overrides the guess: ``coda-node`` or
``coda-bridge``.  Its runs then get the real model, converted from the
validated circuit just before each call; every other attribute
(``batch_run``, ``cancel_current_job``, ``device``, ``connectivity``) is the
executor's own.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from ..circuits.coda_node_ir import CODA_NODE_IR_CLASS, coda_node_ir_model, to_coda_node_ir
from ..circuits.ir import Circuit

__all__ = ["FirstRuntimeExecutor", "adapt_executor", "written_for_coda_node"]

#: The first runtime's top-level package.
CODA_NODE_PACKAGE = "coda_node"
#: Our own package: its executors always take a Circuit.
OWN_PACKAGE = "coda_bridge"


def _in_package(name: object, package: str) -> bool:
    return isinstance(name, str) and (name == package or name.startswith(package + "."))


def _from_coda_node(value: object) -> bool:
    """Whether ``value`` is coda-node's: one of its modules, or a class or function defined there."""
    try:
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
    except Exception:  # an odd object (a lazy proxy) must not break the guess
        return False
    return _in_package(name, CODA_NODE_PACKAGE)


def _module_uses_coda_node(module_name: str) -> bool:
    """Whether the module named ``module_name`` imported anything of coda-node's."""
    module = sys.modules.get(module_name)
    if module is None:
        return False
    try:
        values = list(vars(module).values())
    except TypeError:
        return False
    return any(_from_coda_node(value) for value in values)


def _run_wants_native_ir(executor: object) -> bool:
    """Whether ``run``'s first parameter is annotated with ``NativeGateIR`` (a name or the class)."""
    run = getattr(executor, "run", None)
    try:
        params = list(inspect.signature(run).parameters.values()) if callable(run) else []
    except (TypeError, ValueError):
        return False
    if not params:
        return False
    annotation = params[0].annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__qualname__", "")
    return isinstance(text, str) and CODA_NODE_IR_CLASS in text


def written_for_coda_node(executor: object) -> bool:
    """The guess behind ``executor_ir = "auto"``: does this executor expect coda-node's ``NativeGateIR``?"""
    classes = [cls for cls in type(executor).__mro__ if cls is not object]
    if not classes or _in_package(classes[0].__module__, OWN_PACKAGE):
        return False
    for cls in classes:
        if _from_coda_node(cls) or _module_uses_coda_node(cls.__module__):
            return True
    return _run_wants_native_ir(executor)


def _batch_run(batch_run: Callable[..., Any], jobs: Sequence[tuple[Circuit, int]]) -> Any:
    return batch_run([(to_coda_node_ir(circuit), shots) for circuit, shots in jobs])


class FirstRuntimeExecutor:
    """An executor written for coda-node, handed the ``NativeGateIR`` it expects."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def run(self, ir: Circuit, shots: int) -> Any:
        """The executor's own ``run`` on the converted circuit (its awaitable, when it is async)."""
        return self.inner.run(to_coda_node_ir(ir), shots)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being built): never recurse
            raise AttributeError(name)
        value = getattr(self.inner, name)
        if name == "batch_run" and callable(value):
            return functools.partial(_batch_run, value)
        return value

    def __repr__(self) -> str:
        return f"FirstRuntimeExecutor({self.inner!r})"


def adapt_executor(executor: object, origin: str, mode: str = "auto") -> tuple[object, str]:
    """``executor`` as it should be called, and its origin saying which circuit type it gets.

    ``mode`` is the ``executor_ir`` setting: ``auto`` guesses, ``coda-node`` and
    ``coda-bridge`` decide.  A coda-node executor without an importable
    coda-node is an :class:`~coda_bridge.errors.ExecutorError` now, not at its first job.
    """
    wanted = mode == "coda-node" or (mode == "auto" and written_for_coda_node(executor))
    if not wanted:
        return executor, origin
    coda_node_ir_model()
    reason = "executor_ir=coda-node" if mode == "coda-node" else "written for coda-node"
    return FirstRuntimeExecutor(executor), f"{origin}; {reason}: runs get coda-node's {CODA_NODE_IR_CLASS}"
