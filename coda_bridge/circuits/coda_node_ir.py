"""A circuit as the first runtime's own model, ``coda_node.server.ir.NativeGateIR``.

Executors written for coda-node 0.1.1 read the circuit the pydantic way:
``op.gate.value``, ``op.gate == NativeGate.CZ``, ``ir.metadata.source_hash``,
``ir.model_dump()``, ``ir.model_copy()``, ``isinstance(ir, NativeGateIR)``.
The real model answers every one of them exactly, so such executors get it,
built from a :class:`~coda_bridge.circuits.ir.Circuit` that already passed
every rule.  coda-bridge imports coda-node only here, and only for an
executor whose own code already loaded it (importing it costs about half a
second, most of it the web framework coda-node brings along).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ExecutorError
from .ir import Circuit

__all__ = ["CODA_NODE_IR_MODULE", "coda_node_ir_model", "to_coda_node_ir"]

#: Where coda-node keeps its circuit model.
CODA_NODE_IR_MODULE = "coda_node.server.ir"
#: The model's class name in that module.
CODA_NODE_IR_CLASS = "NativeGateIR"
#: Longest excerpt of a foreign error text quoted in a message.
QUOTE_MAX_CHARS = 200


def _brief(exc: BaseException) -> str:
    """``Type: message`` on one line, cut short."""
    text = " ".join(str(exc).split())
    if len(text) > QUOTE_MAX_CHARS:
        text = text[: QUOTE_MAX_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def coda_node_ir_model() -> Any:
    """coda-node's ``NativeGateIR`` class; an :class:`ExecutorError` when coda-node cannot be imported."""
    try:
        module = importlib.import_module(CODA_NODE_IR_MODULE)
        return getattr(module, CODA_NODE_IR_CLASS)
    except (ImportError, AttributeError) as exc:
        raise ExecutorError(
            f"the executor needs coda-node's {CODA_NODE_IR_CLASS}, but {CODA_NODE_IR_MODULE} cannot be "
            f"imported ({_brief(exc)}); pip install coda-node==0.1.1 beside the backend"
        ) from exc


def to_coda_node_ir(circuit: Circuit) -> Any:
    """``circuit`` as a ``coda_node.server.ir.NativeGateIR`` (about 15 us for a small circuit).

    coda-node's rules accept everything coda-bridge's accept, so this fails
    only when the installed coda-node disagrees with version 0.1.1.
    """
    model = coda_node_ir_model()
    try:
        return model.model_validate(circuit.to_dict())
    except Exception as exc:  # pydantic's ValidationError, or anything a changed model raises
        raise ExecutorError(
            f"the circuit could not be given to the executor as coda-node's {CODA_NODE_IR_CLASS}: "
            f"{_brief(exc)}"
        ) from exc
