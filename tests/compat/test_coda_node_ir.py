"""What a backend written for coda-node 0.1.1 is handed, checked with the real coda-node and coda-qubic.

The probe runs in the compat environment (a process of its own) and reports
as JSON; each test reads one part of that report.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from compat_env import QUBIC_SRC, SUPPORT

pytestmark = pytest.mark.e2e

#: Longest a probe run may take (seconds): qiskit and coda-node imports dominate.
PROBE_TIMEOUT_SEC = 120


@pytest.fixture(scope="module")
def report(compat_python: Path) -> dict[str, Any]:
    """Given the compat environment and coda-qubic's qiskit_sim device file, when the probe runs."""
    device = QUBIC_SRC / "examples" / "device_qiskit_sim.yaml"
    done = subprocess.run(
        [str(compat_python), str(SUPPORT / "probe_native_ir.py"), str(device)],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SEC,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_coda_bridge_never_loads_coda_node_for_its_own_executors(report: dict[str, Any]) -> None:
    # then the built-in simulator is used as it is, and coda-node stayed unimported
    assert report["own_executor_adapted"] is False
    assert report["coda_node_loaded_by_bridge"] is False
    assert report["own_executor_detected_with_coda_node_loaded"] is False


def test_executors_written_for_coda_node_are_recognised(report: dict[str, Any]) -> None:
    # then coda-qubic's simulator and the README-shaped executor both get coda-node's model
    assert report["qubic_detected"] is True
    assert report["example_detected"] is True


def test_gate_names_are_coda_nodes_string_enum(report: dict[str, Any]) -> None:
    assert report["type"] == "coda_node.server.ir.NativeGateIR"
    assert report["gate_value"] == "ry"
    assert report["gate_name"] == "RY"
    assert report["gate_is_enum_member"] is True
    assert report["gate_equals_text"] is True
    assert report["target"] == ["cnot", True]


def test_lists_metadata_model_and_pydantic_methods_behave_as_in_coda_node(report: dict[str, Any]) -> None:
    assert report["list_types"] == ["list"]
    assert report["metadata"] == [True, "0.1.0"]
    assert report["model_dump_matches"] is True
    assert report["model_dump_json_matches"] is True
    assert report["model_copy"] == [3, 2]
    assert report["model_validate_round_trip"] is True
    assert report["example_model_problems"] == []


def test_an_adapted_coda_qubic_executor_runs_and_keeps_its_own_attributes(report: dict[str, Any]) -> None:
    # then its run returned coda-node's ExecutionResult, checked; its device and cancel pass through
    assert "written for coda-node" in report["adapted_origin"]
    assert report["adapted_result_type"] == "ExecutionResult"
    assert report["adapted_shots"] == [400, 400]
    assert report["adapted_device_edges"] == [[1, 0], [2, 1]]
    assert report["adapted_has_cancel"] is True
