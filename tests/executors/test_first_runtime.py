"""Executors written for coda-node get coda-node's NativeGateIR; coda-bridge's own never do.

coda-node is not installed in the test environment (tests/compat runs the
real one): a stand-in package named ``coda_node``, written here, has a
pydantic ``NativeGateIR`` at the same import path.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coda_bridge.circuits.coda_node_ir import to_coda_node_ir
from coda_bridge.circuits.ir import Circuit, parse_ir
from coda_bridge.errors import ExecutorError
from coda_bridge.executors import NoopExecutor, StateVectorExecutor, call_batch_run, call_run, cancel
from coda_bridge.executors.first_runtime import FirstRuntimeExecutor, adapt_executor, written_for_coda_node

STAND_IN_IR = """
from enum import StrEnum
from pydantic import BaseModel, Field


class NativeGate(StrEnum):
    RX = "rx"
    RY = "ry"
    CZ = "cz"


class GateOp(BaseModel):
    gate: NativeGate
    qubits: list[int]
    params: list[float] = Field(default_factory=list)


class IRMetadata(BaseModel):
    source_hash: str
    compiled_at: str
    compiler_version: str = "0.1.0"
    optimization_level: int = 2


class NativeGateIR(BaseModel):
    version: str = "1.0"
    target: str
    num_qubits: int
    gates: list[GateOp]
    measurements: list[int]
    metadata: IRMetadata
"""

STAND_IN_EXECUTOR = """
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecutionResult:
    counts: dict
    execution_time_ms: float
    shots_completed: int
"""

#: A backend written for coda-node: it imports coda-node's types and reads the pydantic way.
NODE_BACKEND = """
from coda_node.server.executor import ExecutionResult
from coda_node.server.ir import NativeGate, NativeGateIR


class NodeBackend:
    def __init__(self):
        self.seen = []
        self.cancelled = 0
        self.device = "fridge"

    async def run(self, ir: NativeGateIR, shots: int) -> ExecutionResult:
        self.seen.append(ir)
        flipped = {op.qubits[0] for op in ir.gates if op.gate == NativeGate.RX}
        key = "".join("1" if q in flipped else "0" for q in ir.measurements)
        return ExecutionResult(counts={key: shots}, execution_time_ms=1.0, shots_completed=shots)

    def batch_run(self, jobs):
        self.seen.extend(ir for ir, _ in jobs)
        return [{"counts": {"0" * len(ir.measurements): s}, "execution_time_ms": 0.0,
                 "shots_completed": s} for ir, s in jobs]

    def cancel_current_job(self):
        self.cancelled += 1


def create_executor():
    return NodeBackend()
"""

#: coda-node only named in an annotation (its import is for type checkers only).
ANNOTATED_BACKEND = """
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coda_node.server.ir import NativeGateIR


class AnnotatedBackend:
    def run(self, ir: NativeGateIR, shots: int):
        key = "1" * len(ir.measurements) if ir.gates[0].gate.value == "ry" else "0" * len(ir.measurements)
        return {"counts": {key: shots}, "execution_time_ms": 0.0, "shots_completed": shots}
"""

#: A backend of coda-bridge's own kind that never touches coda-node.
BRIDGE_BACKEND = """
class BridgeBackend:
    def run(self, ir, shots):
        counts = {"0" * len(ir.measurements): shots}
        return {"counts": counts, "execution_time_ms": 0.0, "shots_completed": shots}
"""

Writer = Callable[[str, str], None]


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """Throw-away modules on ``sys.path``, forgotten afterwards (coda_node included)."""
    root = tmp_path / "mods"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: set[str] = set()

    def write(relative: str, source: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        written.add(relative.split("/", maxsplit=1)[0].removesuffix(".py"))
        importlib.invalidate_caches()

    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in written:
            del sys.modules[name]


@pytest.fixture
def coda_node(modules: Writer) -> Writer:
    """The stand-in coda-node package."""
    modules("coda_node/__init__.py", "")
    modules("coda_node/server/__init__.py", "")
    modules("coda_node/server/ir.py", STAND_IN_IR)
    modules("coda_node/server/executor.py", STAND_IN_EXECUTOR)
    return modules


def circuit(gate: str = "rx") -> Circuit:
    return parse_ir(
        {
            "target": "cz",
            "num_qubits": 2,
            "gates": [{"gate": gate, "qubits": [1], "params": [3.14159]}],
            "measurements": [0, 1],
            "metadata": {"source_hash": "fr", "compiled_at": "2026-01-01T00:00:00Z"},
        }
    )


def build(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)()


# --------------------------------------------------------------------------- which executors


def test_a_backend_importing_coda_node_is_adapted_and_its_run_gets_native_gate_ir(coda_node: Writer) -> None:
    # given a backend module that imports coda-node's ExecutionResult and NativeGateIR
    coda_node("node_backend.py", NODE_BACKEND)
    backend = build("node_backend", "create_executor")

    # when it is adapted and run
    adapted, origin = adapt_executor(backend, "test origin")
    result = call_run(adapted, circuit(), 7)

    # then it received coda-node's model, with the gate as its enum, and its answer counts
    assert isinstance(adapted, FirstRuntimeExecutor)
    assert origin == "test origin; written for coda-node: runs get coda-node's NativeGateIR"
    (ir,) = backend.seen
    assert type(ir).__module__ == "coda_node.server.ir"
    assert type(ir).__name__ == "NativeGateIR"
    assert ir.gates[0].gate.value == "rx"
    assert type(ir.gates[0].gate).__name__ == "NativeGate"
    assert isinstance(ir.measurements, list)
    assert result.counts == {"01": 7}


def test_an_adapted_backend_keeps_batch_run_cancel_and_its_attributes(coda_node: Writer) -> None:
    # given an adapted coda-node backend with batch_run, cancel_current_job and a device
    coda_node("node_backend.py", NODE_BACKEND)
    backend = build("node_backend", "create_executor")
    adapted, _ = adapt_executor(backend, "x")

    # when a batch runs and the current job is cancelled
    results = call_batch_run(adapted, [(circuit(), 3), (circuit("ry"), 4)])
    cancelled = cancel(adapted)

    # then every circuit of the batch was converted, and the rest is the backend's own
    assert [type(ir).__name__ for ir in backend.seen] == ["NativeGateIR", "NativeGateIR"]
    assert [r.shots_completed for r in results] == [3, 4]
    assert cancelled is True
    assert backend.cancelled == 1
    assert adapted.device == "fridge"


def test_a_backend_naming_native_gate_ir_only_in_annotations_is_adapted(coda_node: Writer) -> None:
    # given a backend that imports coda-node for type checkers only
    coda_node("annotated_backend.py", ANNOTATED_BACKEND)
    backend = build("annotated_backend", "AnnotatedBackend")

    # when it is adapted and run
    adapted, _ = adapt_executor(backend, "x")
    result = call_run(adapted, circuit("ry"), 5)

    # then its run read the gate through the enum's ``.value``, which a plain string lacks
    assert written_for_coda_node(backend) is True
    assert result.counts == {"11": 5}


@pytest.mark.parametrize("executor", [NoopExecutor(), StateVectorExecutor(seed=1)], ids=repr)
def test_coda_bridges_own_executors_are_never_adapted(coda_node: Writer, executor: object) -> None:
    # given coda-node importable and already loaded in the process
    importlib.import_module("coda_node.server.ir")

    # when one of coda-bridge's executors is adapted
    adapted, origin = adapt_executor(executor, "own")

    # then it stays as it is
    assert adapted is executor
    assert origin == "own"


def test_a_backend_that_never_touches_coda_node_gets_the_circuit(coda_node: Writer) -> None:
    coda_node("bridge_backend.py", BRIDGE_BACKEND)
    backend = build("bridge_backend", "BridgeBackend")

    adapted, _ = adapt_executor(backend, "x")

    assert adapted is backend


# --------------------------------------------------------------------------- the setting


def test_executor_ir_coda_bridge_keeps_even_a_coda_node_backend_as_it_is(coda_node: Writer) -> None:
    coda_node("node_backend.py", NODE_BACKEND)
    backend = build("node_backend", "create_executor")

    adapted, _ = adapt_executor(backend, "x", "coda-bridge")

    assert adapted is backend


def test_executor_ir_coda_node_adapts_any_backend(coda_node: Writer) -> None:
    # given a backend with no sign of coda-node, and executor_ir=coda-node
    coda_node("bridge_backend.py", BRIDGE_BACKEND)
    backend = build("bridge_backend", "BridgeBackend")

    # when it is adapted
    adapted, origin = adapt_executor(backend, "x", "coda-node")

    # then its runs get coda-node's model
    assert isinstance(adapted, FirstRuntimeExecutor)
    assert "executor_ir=coda-node" in origin


def test_executor_ir_coda_node_without_coda_node_installed_fails_at_build(modules: Writer) -> None:
    # given no coda_node package anywhere on the path
    modules("bridge_backend.py", BRIDGE_BACKEND)
    backend = build("bridge_backend", "BridgeBackend")

    # when the setting asks for coda-node's model
    with pytest.raises(ExecutorError) as caught:
        adapt_executor(backend, "x", "coda-node")

    # then the build fails at once, saying what to install
    assert "coda_node.server.ir cannot be imported" in str(caught.value)
    assert "pip install coda-node==0.1.1" in str(caught.value)


# --------------------------------------------------------------------------- the conversion


def test_conversion_keeps_every_field_with_defaults_filled_in(coda_node: Writer) -> None:
    ir = to_coda_node_ir(circuit())

    assert ir.model_dump() == circuit().to_dict()
    assert ir.metadata.compiler_version == "0.1.0"


def test_a_conversion_the_model_refuses_is_an_executor_error_naming_it(coda_node: Writer) -> None:
    # given a stand-in coda-node whose enum lacks a gate coda-bridge accepts ("id")
    with_id = parse_ir(
        {
            "target": "cz",
            "num_qubits": 1,
            "gates": [{"gate": "id", "qubits": [0], "params": [20.0]}],
            "measurements": [0],
            "metadata": {"source_hash": "fr", "compiled_at": "2026-01-01T00:00:00Z"},
        }
    )

    # when it is converted
    with pytest.raises(ExecutorError) as caught:
        to_coda_node_ir(with_id)

    # then the error names the model and pydantic's reason, on one line
    message = str(caught.value)
    assert message.startswith("the circuit could not be given to the executor as coda-node's NativeGateIR")
    assert "ValidationError" in message
    assert "\n" not in message
