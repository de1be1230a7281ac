"""Run in the compat environment: what a backend written for coda-node sees of a circuit; prints JSON.

``python probe_native_ir.py DEVICE_YAML`` answers one JSON object: whether
coda-bridge loaded coda-node on its own, which executors it takes for
coda-node's, and how the converted circuit behaves.
"""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace
from typing import Any

BELL = {
    "target": "cnot",
    "num_qubits": 2,
    "gates": [
        {"gate": "ry", "qubits": [0], "params": [math.pi / 2]},
        {"gate": "cnot", "qubits": [0, 1]},
    ],
    "measurements": [0, 1],
    "metadata": {"source_hash": "probe", "compiled_at": "2026-01-01T00:00:00Z"},
}


def main(device_yaml: str) -> dict[str, Any]:
    from coda_bridge.circuits.ir import parse_ir
    from coda_bridge.executors import call_run
    from coda_bridge.executors.first_runtime import adapt_executor, written_for_coda_node
    from coda_bridge.executors.simulator import StateVectorExecutor

    report: dict[str, Any] = {}
    circuit = parse_ir(BELL)
    simulator, _ = adapt_executor(StateVectorExecutor(seed=1), "simulator")
    report["own_executor_adapted"] = type(simulator).__name__ != "StateVectorExecutor"
    report["coda_node_loaded_by_bridge"] = "coda_node" in sys.modules

    import first_runtime_example
    from coda_qubic.executor_factory import create_executor

    qubic = create_executor(SimpleNamespace(device_config=device_yaml))
    report["qubic_detected"] = written_for_coda_node(qubic)
    report["example_detected"] = written_for_coda_node(first_runtime_example.create_executor())
    report["own_executor_detected_with_coda_node_loaded"] = written_for_coda_node(StateVectorExecutor())

    from coda_node.server.ir import IRMetadata, NativeGate, NativeGateIR

    from coda_bridge.circuits.coda_node_ir import to_coda_node_ir

    ir = to_coda_node_ir(circuit)
    first, second = ir.gates
    report["type"] = f"{type(ir).__module__}.{type(ir).__qualname__}"
    report["gate_value"] = first.gate.value
    report["gate_name"] = first.gate.name
    report["gate_is_enum_member"] = first.gate == NativeGate.RY and NativeGate(first.gate) is first.gate
    report["gate_equals_text"] = second.gate == "cnot"
    report["target"] = [ir.target, ir.target == "cnot"]
    report["list_types"] = sorted(
        {type(v).__name__ for v in (ir.gates, first.qubits, first.params, ir.measurements)}
    )
    report["metadata"] = [isinstance(ir.metadata, IRMetadata), ir.metadata.compiler_version]
    report["model_dump_matches"] = ir.model_dump() == circuit.to_dict()
    report["model_dump_json_matches"] = json.loads(ir.model_dump_json()) == circuit.to_dict()
    copied = ir.model_copy(update={"num_qubits": 3})
    report["model_copy"] = [copied.num_qubits, ir.num_qubits]
    report["model_validate_round_trip"] = NativeGateIR.model_validate(ir.model_dump()) == ir
    report["example_model_problems"] = first_runtime_example.model_problems(ir)

    adapted, origin = adapt_executor(qubic, "coda-qubic")
    result = call_run(adapted, circuit, 400)
    report["adapted_origin"] = origin
    report["adapted_result_type"] = type(result).__name__
    report["adapted_shots"] = [sum(result.counts.values()), result.shots_completed]
    report["adapted_device_edges"] = [list(edge) for edge in adapted.device.directed_edges]
    report["adapted_has_cancel"] = callable(getattr(adapted, "cancel_current_job", None))
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
