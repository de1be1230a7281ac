"""An executor shaped as the first runtime's README shows one (coda-node 0.1.1), for the compat tests.

The shape is the README's: ``ExecutionResult`` imported from
``coda_node.server.executor``, ``async def run(self, ir: NativeGateIR, shots)``
and a factory taking nothing.  ``run_on_hardware`` stands in for the
device: it checks that ``ir`` is coda-node's own model (raising, and so
failing the job, when it is not), then flips each qubit that an
``rx(pi)`` rotates, so a test knows the counts to expect.
"""

from __future__ import annotations

import json
import math

from coda_node.server.executor import ExecutionResult
from coda_node.server.ir import IRMetadata, NativeGate, NativeGateIR

#: Stand-in duration of one run on the "hardware".
EXAMPLE_RUN_MS = 1.0


class ExampleExecutor:
    async def run(self, ir: NativeGateIR, shots: int) -> ExecutionResult:
        counts = run_on_hardware(ir, shots)
        return ExecutionResult(counts=counts, execution_time_ms=EXAMPLE_RUN_MS, shots_completed=shots)


def create_executor() -> ExampleExecutor:
    return ExampleExecutor()


def model_problems(ir: object) -> list[str]:
    """What in ``ir`` differs from coda-node's own model (empty when nothing does)."""
    if not isinstance(ir, NativeGateIR):
        return [f"ir is {type(ir).__module__}.{type(ir).__qualname__}, not coda-node's NativeGateIR"]
    problems = []
    for op in ir.gates:
        if not (isinstance(op.gate, NativeGate) and NativeGate(op.gate) is op.gate):
            problems.append(f"gate {op.gate!r} is not a NativeGate")
        if op.gate.name != op.gate.value.upper():
            problems.append(f"gate name {op.gate.name!r} does not match value {op.gate.value!r}")
        if not (isinstance(op.qubits, list) and isinstance(op.params, list)):
            problems.append("qubits and params are not lists")
    if not isinstance(ir.gates, list) or not isinstance(ir.measurements, list):
        problems.append("gates and measurements are not lists")
    if not isinstance(ir.metadata, IRMetadata):
        problems.append(f"metadata is {type(ir.metadata).__name__}")
    if json.loads(ir.model_dump_json()) != ir.model_dump(mode="json"):
        problems.append("model_dump_json and model_dump disagree")
    if NativeGateIR.model_validate(ir.model_dump()) != ir or ir.model_copy(deep=True) != ir:
        problems.append("model_validate or model_copy does not give the same circuit back")
    return problems


def run_on_hardware(ir: NativeGateIR, shots: int) -> dict[str, int]:
    problems = model_problems(ir)
    if problems:
        raise TypeError("; ".join(problems))
    flipped: set[int] = set()
    for op in ir.gates:
        if op.gate == NativeGate.RX and math.isclose(abs(op.params[0]), math.pi):
            flipped ^= {op.qubits[0]}
    return {"".join("1" if q in flipped else "0" for q in ir.measurements): shots}
