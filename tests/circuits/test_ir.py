"""The Native Gate IR v1.0 rules (PROTOCOL.md 4.3): every rule enforced, clear errors, stable JSON."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from coda_bridge.circuits.ir import (
    GATE_SHAPES,
    LEGAL_GATES,
    MAX_QUBITS,
    TARGETS,
    Circuit,
    Gate,
    Metadata,
    parse_ir,
)
from coda_bridge.errors import IRError, JobError

METADATA = {"source_hash": "abc", "compiled_at": "2026-01-01T00:00:00Z"}


def doc(gates: list[Any], *, target: str = "cz", num_qubits: int = 2, **extra: Any) -> dict[str, Any]:
    """An IR document with defaults for everything the test does not care about."""
    data: dict[str, Any] = {
        "version": "1.0",
        "target": target,
        "num_qubits": num_qubits,
        "gates": gates,
        "measurements": [0],
        "metadata": dict(METADATA),
    }
    data.update(extra)
    return data


def well_formed(name: str) -> dict[str, Any]:
    """A gate object of the right shape for ``name``."""
    n_qubits, n_params = GATE_SHAPES[name]
    return {"gate": name, "qubits": list(range(n_qubits)), "params": [0.5] * n_params}


def expect_error(data: Any, *fragments: str) -> str:
    """Parse ``data``, expect an IRError whose one-line message holds every fragment."""
    with pytest.raises(IRError) as info:
        parse_ir(data)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_protocol_example_parses() -> None:
    text = json.dumps(
        doc(
            [
                {"gate": "ry", "qubits": [0], "params": [1.5707963]},
                {"gate": "cz", "qubits": [0, 1], "params": []},
            ],
            measurements=[0, 1],
            metadata={**METADATA, "compiler_version": "0.1.0", "optimization_level": 2},
        )
    )
    circuit = parse_ir(text)
    assert circuit.version == "1.0"
    assert circuit.target == "cz"
    assert circuit.num_qubits == 2
    assert circuit.measurements == (0, 1)
    assert circuit.gates[0].gate == "ry"
    assert circuit.gates[0].qubits == (0,)
    assert circuit.gates[0].params == (1.5707963,)
    assert circuit.gates[1].params == ()
    assert circuit.metadata.source_hash == "abc"
    assert circuit.metadata.compiled_at == "2026-01-01T00:00:00Z"


def test_defaults_are_filled_in() -> None:
    data = doc([{"gate": "cz", "qubits": [0, 1]}])
    del data["version"]
    circuit = parse_ir(data)
    assert circuit.version == "1.0"
    assert circuit.gates[0].params == ()
    assert circuit.metadata.compiler_version == "0.1.0"
    assert circuit.metadata.optimization_level == 2


def test_irerror_is_a_job_error() -> None:
    assert issubclass(IRError, JobError)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(GATE_SHAPES))
def test_every_gate_on_every_target(target: str, name: str) -> None:
    data = doc([{"gate": "rz", "qubits": [0], "params": [0.1]}, well_formed(name)], target=target)
    if name in LEGAL_GATES[target]:
        assert parse_ir(data).gates[1].gate == name
    else:
        expect_error(data, f"Gate '{name}' not legal for target '{target}' at index 1")


def test_legal_gate_table_matches_protocol() -> None:
    assert TARGETS == ("cz", "iswap", "pcz", "cnot")
    assert LEGAL_GATES["cz"] == {"rx", "ry", "rz", "cz", "id"}
    assert LEGAL_GATES["iswap"] == {"rx", "ry", "rz", "iswap", "id"}
    assert LEGAL_GATES["pcz"] == {"rx", "ry", "rz", "cp", "id"}
    assert LEGAL_GATES["cnot"] == {"rx", "ry", "rz", "x90", "y_minus_90", "virtual_z", "cnot", "id"}


@pytest.mark.parametrize("name", sorted(GATE_SHAPES))
def test_wrong_qubit_count(name: str) -> None:
    target = next(t for t in TARGETS if name in LEGAL_GATES[t])
    n_qubits, n_params = GATE_SHAPES[name]
    wrong = 2 if n_qubits == 1 else 1
    gate = {"gate": name, "qubits": list(range(wrong)), "params": [0.5] * n_params}
    expect_error(
        doc([gate], target=target, num_qubits=3),
        f"Gate '{name}' at index 0 takes {n_qubits} qubit(s), got {wrong}",
    )


@pytest.mark.parametrize("name", sorted(GATE_SHAPES))
def test_wrong_param_count(name: str) -> None:
    target = next(t for t in TARGETS if name in LEGAL_GATES[t])
    n_qubits, n_params = GATE_SHAPES[name]
    gate = {"gate": name, "qubits": list(range(n_qubits)), "params": [0.5] * (n_params + 1)}
    expect_error(
        doc([gate], target=target), f"Gate '{name}' at index 0 takes {n_params} param(s), got {n_params + 1}"
    )


def test_missing_param_for_a_rotation() -> None:
    expect_error(doc([{"gate": "rx", "qubits": [0]}]), "Gate 'rx' at index 0 takes 1 param(s), got 0")


def test_unknown_gate_names_index() -> None:
    expect_error(doc([well_formed("rx"), {"gate": "foo", "qubits": [0]}]), "Unknown gate 'foo' at index 1")


@pytest.mark.parametrize(
    ("gate", "fragment"),
    [
        ({"gate": "cz", "qubits": [0, 5]}, "Gate 'cz' at index 0 acts on qubit 5, outside [0, 2)"),
        (
            {"gate": "rx", "qubits": [2], "params": [1.0]},
            "Gate 'rx' at index 0 acts on qubit 2, outside [0, 2)",
        ),
        ({"gate": "rx", "qubits": [-1], "params": [1.0]}, "acts on qubit -1, outside [0, 2)"),
    ],
)
def test_gate_qubit_out_of_range(gate: dict[str, Any], fragment: str) -> None:
    expect_error(doc([gate]), fragment)


def test_out_of_range_error_names_the_right_index() -> None:
    gates = [well_formed("rx"), well_formed("ry"), well_formed("cz"), {"gate": "cz", "qubits": [1, 5]}]
    expect_error(doc(gates), "Gate 'cz' at index 3 acts on qubit 5, outside [0, 2)")


@pytest.mark.parametrize("qubit", [7, -1, 2])
def test_measurement_out_of_range(qubit: int) -> None:
    expect_error(
        doc([], measurements=[0, qubit]), f"Measurement at index 1 names qubit {qubit}, outside [0, 2)"
    )


@pytest.mark.parametrize("qubit", [True, 1.0, "1", None, [1]])
def test_measurement_not_an_integer(qubit: Any) -> None:
    expect_error(doc([], measurements=[qubit]), "Measurement at index 0 must be an integer qubit index")


@pytest.mark.parametrize("name", ["cz", "cnot", "iswap", "cp"])
def test_two_qubit_gate_on_one_qubit_twice(name: str) -> None:
    target = next(t for t in TARGETS if name in LEGAL_GATES[t])
    gate = {"gate": name, "qubits": [1, 1], "params": [0.5] * GATE_SHAPES[name][1]}
    expect_error(doc([gate], target=target), f"Gate '{name}' at index 0 names qubit 1 twice")


@pytest.mark.parametrize("qubit", [True, False, 1.0, "0", None, [0]])
def test_non_integer_gate_qubit(qubit: Any) -> None:
    expect_error(
        doc([{"gate": "rx", "qubits": [qubit], "params": [1.0]}]),
        "Gate 'rx' at index 0 has a non-integer qubit",
    )


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_param_in_json_text(text: str) -> None:
    raw = json.dumps(doc([{"gate": "rx", "qubits": [0], "params": [0.0]}])).replace("[0.0]", f"[{text}]")
    expect_error(raw, "Gate 'rx' at index 0 has a non-finite param")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_param_in_mapping(value: float) -> None:
    expect_error(doc([{"gate": "rz", "qubits": [0], "params": [value]}]), "non-finite param")


@pytest.mark.parametrize("value", ["1.0", True, None, [1.0], 10**400])
def test_non_numeric_param(value: Any) -> None:
    expect_error(
        doc([{"gate": "rz", "qubits": [0], "params": [value]}]),
        "Gate 'rz' at index 0 has a non-numeric param",
    )


def test_integer_param_becomes_float() -> None:
    circuit = parse_ir(doc([{"gate": "rz", "qubits": [0], "params": [1]}]))
    assert circuit.gates[0].params == (1.0,)
    assert isinstance(circuit.gates[0].params[0], float)


@pytest.mark.parametrize("target", ["foo", "CZ", "", 5, None])
def test_unknown_target(target: Any) -> None:
    expect_error(doc([], target=target), "Unknown target", "expected one of cz, iswap, pcz, cnot")


def test_unknown_target_message() -> None:
    assert expect_error(doc([], target="foo")) == "Unknown target 'foo'; expected one of cz, iswap, pcz, cnot"


@pytest.mark.parametrize("num_qubits", [0, -1, MAX_QUBITS + 1, 1.0, 2.5, True, "2", None])
def test_num_qubits_range_and_type(num_qubits: Any) -> None:
    expect_error(
        doc([], num_qubits=num_qubits, measurements=[]), "num_qubits must be an integer from 1 to 50"
    )


def test_num_qubits_message() -> None:
    message = expect_error(doc([], num_qubits=51))
    assert message == "num_qubits must be an integer from 1 to 50, got 51"


@pytest.mark.parametrize("num_qubits", [1, MAX_QUBITS])
def test_num_qubits_bounds_are_inclusive(num_qubits: int) -> None:
    assert parse_ir(doc([], num_qubits=num_qubits)).num_qubits == num_qubits


@pytest.mark.parametrize("version", ["2.0", "1", 1.0, None])
def test_version_must_be_1_0(version: Any) -> None:
    expect_error(doc([], version=version), "Unsupported IR version")


@pytest.mark.parametrize("field", ["target", "num_qubits", "gates", "measurements", "metadata"])
def test_missing_required_field(field: str) -> None:
    data = doc([])
    del data[field]
    expect_error(data, f"Missing required field '{field}'")


@pytest.mark.parametrize("field", ["source_hash", "compiled_at"])
def test_missing_metadata_field(field: str) -> None:
    data = doc([])
    del data["metadata"][field]
    expect_error(data, f"Missing required field 'metadata.{field}'")


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({**METADATA, "source_hash": 5}, "metadata.source_hash must be a string"),
        ({**METADATA, "compiled_at": None}, "metadata.compiled_at must be a string"),
        ({**METADATA, "compiler_version": 1}, "metadata.compiler_version must be a string"),
        ({**METADATA, "optimization_level": 4}, "metadata.optimization_level must be an integer from 0 to 3"),
        (
            {**METADATA, "optimization_level": -1},
            "metadata.optimization_level must be an integer from 0 to 3",
        ),
        (
            {**METADATA, "optimization_level": 2.0},
            "metadata.optimization_level must be an integer from 0 to 3",
        ),
        (
            {**METADATA, "optimization_level": True},
            "metadata.optimization_level must be an integer from 0 to 3",
        ),
        ("abc", "metadata must be an object"),
    ],
)
def test_metadata_rules(metadata: Any, fragment: str) -> None:
    expect_error(doc([], metadata=metadata), fragment)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_optimization_levels_accepted(level: int) -> None:
    assert (
        parse_ir(doc([], metadata={**METADATA, "optimization_level": level})).metadata.optimization_level
        == level
    )


@pytest.mark.parametrize(
    ("gates", "fragment"),
    [
        ("rx", "gates must be a list"),
        ([5], "Gate at index 0 must be an object"),
        ([well_formed("rx"), {"qubits": [0]}], "Gate at index 1 is missing field 'gate'"),
        ([{"gate": "rx", "params": [1.0]}], "Gate at index 0 is missing field 'qubits'"),
        ([{"gate": "rx", "qubits": 0, "params": [1.0]}], "Gate at index 0: qubits must be a list"),
        ([{"gate": "rx", "qubits": [0], "params": 1.0}], "Gate at index 0: params must be a list"),
        ([{"gate": 7, "qubits": [0]}], "Unknown gate 7 at index 0"),
    ],
)
def test_gate_structure(gates: Any, fragment: str) -> None:
    expect_error(doc(gates), fragment)


def test_measurements_must_be_a_list() -> None:
    expect_error(doc([], measurements=0), "measurements must be a list")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "IR is not valid JSON"),
        ("", "IR is not valid JSON"),
        ("[1, 2]", "IR must be a JSON object, got list"),
        ("42", "IR must be a JSON object, got int"),
        ("null", "IR must be a JSON object, got NoneType"),
        (b"\xff\xfe", "IR is not UTF-8 text"),
        ("[" * 100_000 + "]" * 100_000, "IR"),
        ("1" * 5000, "IR is not valid JSON"),
    ],
)
def test_bad_documents(raw: str | bytes, fragment: str) -> None:
    expect_error(raw, fragment)


def test_bytes_input() -> None:
    assert parse_ir(json.dumps(doc([])).encode()).target == "cz"


def test_huge_values_are_not_echoed() -> None:
    message = expect_error(doc([], target="x" * 100_000))
    assert len(message) < 200
    message = expect_error(doc([{"gate": "g" * 100_000, "qubits": [0]}]))
    assert len(message) < 200
    message = expect_error(doc([], num_qubits=10**5000))
    assert len(message) < 200


def test_unknown_fields_are_ignored() -> None:
    data = doc([{**well_formed("rx"), "duration_ns": 20}], extra_field=1)
    assert parse_ir(data).gates[0].gate == "rx"


def test_empty_circuit_is_valid() -> None:
    circuit = parse_ir(doc([], measurements=[]))
    assert circuit.gates == ()
    assert circuit.measurements == ()


@pytest.mark.parametrize("target", TARGETS)
def test_round_trip_and_stable_json(target: str) -> None:
    gates = [well_formed(name) for name in sorted(LEGAL_GATES[target])]
    circuit = parse_ir(doc(gates, target=target, num_qubits=3, measurements=[2, 0, 1]))
    text = circuit.to_json()
    assert parse_ir(text) == circuit
    assert parse_ir(text).to_json() == text
    assert circuit.to_json() == text
    assert json.loads(text) == circuit.to_dict()


def test_to_dict_fills_defaults_in_protocol_order() -> None:
    data = doc([{"gate": "cz", "qubits": [0, 1]}])
    del data["version"]
    out = parse_ir(data).to_dict()
    assert list(out) == ["version", "target", "num_qubits", "gates", "measurements", "metadata"]
    assert out["version"] == "1.0"
    assert out["gates"] == [{"gate": "cz", "qubits": [0, 1], "params": []}]
    assert out["metadata"] == {**METADATA, "compiler_version": "0.1.0", "optimization_level": 2}


def test_direct_construction_is_validated() -> None:
    metadata = Metadata(source_hash="a", compiled_at="b")
    ok = Circuit(
        target="cz",
        num_qubits=2,
        gates=[Gate(gate="cz", qubits=[0, 1])],
        measurements=[0, 1],
        metadata=metadata,
    )
    assert ok.gates[0].qubits == (0, 1)
    assert ok == parse_ir(ok.to_dict())
    hash(ok)
    with pytest.raises(IRError, match="not legal for target 'cz' at index 0"):
        Circuit(
            target="cz",
            num_qubits=2,
            gates=[Gate(gate="cnot", qubits=(0, 1))],
            measurements=[],
            metadata=metadata,
        )


def test_circuit_is_immutable() -> None:
    circuit = parse_ir(doc([]))
    with pytest.raises(AttributeError):
        circuit.target = "iswap"  # type: ignore[misc]


def test_model_dump_aliases() -> None:
    circuit = parse_ir(doc([well_formed("rx")]))
    assert circuit.model_dump() == circuit.to_dict()
    assert circuit.model_dump_json() == circuit.to_json()


def test_megabyte_document_parses_quickly() -> None:
    gates = [{"gate": "rx", "qubits": [i % 50], "params": [0.123456789]} for i in range(25_000)]
    text = json.dumps(doc(gates, num_qubits=50))
    assert len(text) > 1_000_000
    started = time.perf_counter()
    circuit = parse_ir(text)
    assert time.perf_counter() - started < 3.0
    assert len(circuit.gates) == 25_000


def test_megabyte_document_with_late_error_is_rejected_cleanly() -> None:
    gates = [{"gate": "rx", "qubits": [0], "params": [0.1]} for _ in range(25_000)]
    gates.append({"gate": "cnot", "qubits": [0, 1]})
    message = expect_error(json.dumps(doc(gates)), "Gate 'cnot' not legal for target 'cz' at index 25000")
    assert len(message) < 200
