"""OpenQASM subset -> Native Gate IR: parsing, per-target decompositions, errors naming the line."""

from __future__ import annotations

import cmath
import hashlib
import math
import re
from typing import Any

import numpy as np
import pytest

from coda_bridge.circuits.ir import LEGAL_GATES, TARGETS, Circuit, parse_ir
from coda_bridge.circuits.qasm import qasm_to_ir
from coda_bridge.errors import IRError
from coda_bridge.executors.simulator import StateVectorExecutor, gate_unitary

PI = math.pi

BELL = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
"""


def counts(circuit: Circuit, shots: int = 2000) -> dict[str, int]:
    return StateVectorExecutor(seed=11).run(circuit, shots).counts


def assert_native(circuit: Circuit, target: str) -> None:
    assert circuit.target == target
    assert {g.gate for g in circuit.gates} <= LEGAL_GATES[target]
    assert parse_ir(circuit.to_json()) == circuit


# --------------------------------------------------------------------------- reference matrices


def u3(theta: float, phi: float, lam: float) -> np.ndarray[Any, Any]:
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    return np.array(
        [[c, -cmath.exp(1j * lam) * s], [cmath.exp(1j * phi) * s, cmath.exp(1j * (phi + lam)) * c]]
    )


H = np.array([[1, 1], [1, -1]]) / math.sqrt(2)
X = np.array([[0, 1], [1, 0]])
Y = np.array([[0, -1j], [1j, 0]])
Z = np.diag([1, -1])
S = np.diag([1, 1j])
T = np.diag([1, cmath.exp(1j * PI / 4)])
SX = np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]]) / 2
CX = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
CX_REVERSED = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]])
CZ = np.diag([1, 1, 1, -1])
ISWAP = np.array([[1, 0, 0, 0], [0, 0, 1j, 0], [0, 1j, 0, 0], [0, 0, 0, 1]])
SWAP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def cphase(lam: float) -> np.ndarray[Any, Any]:
    return np.diag([1, 1, 1, cmath.exp(1j * lam)])


def rot(axis: np.ndarray[Any, Any], theta: float) -> np.ndarray[Any, Any]:
    return math.cos(theta / 2) * np.eye(2) - 1j * math.sin(theta / 2) * axis


def circuit_unitary(circuit: Circuit) -> np.ndarray[Any, Any]:
    """The circuit's matrix from the simulator's gate matrices, qubit 0 most significant."""
    n = circuit.num_qubits
    total = np.eye(2**n, dtype=complex)
    for gate in circuit.gates:
        u = gate_unitary(gate.gate, gate.params)
        k = len(gate.qubits)
        order = list(gate.qubits) + [q for q in range(n) if q not in gate.qubits]
        full = np.kron(u, np.eye(2 ** (n - k))).reshape([2] * (2 * n))
        inverse = list(np.argsort(order))
        full = full.transpose(inverse + [n + i for i in inverse]).reshape(2**n, 2**n)
        total = full @ total
    return total


def assert_equal_up_to_phase(actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> None:
    index = np.unravel_index(np.argmax(np.abs(expected)), expected.shape)
    phase = actual[index] / expected[index]
    assert abs(abs(phase) - 1) < 1e-9, "not equal up to a global phase"
    assert np.allclose(actual, phase * expected, atol=1e-9)


# --------------------------------------------------------------------------- whole programs


@pytest.mark.parametrize("target", TARGETS)
def test_bell_on_every_target(target: str) -> None:
    circuit = qasm_to_ir(BELL, target)
    assert_native(circuit, target)
    assert circuit.num_qubits == 2
    assert circuit.measurements == (0, 1)
    result = counts(circuit)
    assert set(result) == {"00", "11"}
    assert 0.4 < result["00"] / 2000 < 0.6


@pytest.mark.parametrize("target", TARGETS)
def test_ghz_on_every_target(target: str) -> None:
    source = """
    OPENQASM 3;
    qubit[3] q;
    bit[3] c;
    h q[0];
    cx q[0], q[1];
    cx q[1], q[2];
    measure q -> c;
    """
    circuit = qasm_to_ir(source, target)
    assert_native(circuit, target)
    assert set(counts(circuit)) == {"000", "111"}


@pytest.mark.parametrize("target", TARGETS)
def test_cx_truth_table_on_every_target(target: str) -> None:
    for control_in, target_in, expected in [(0, 0, "00"), (0, 1, "01"), (1, 0, "11"), (1, 1, "10")]:
        lines = ["qubit[2] q;", "bit[2] c;"]
        lines += ["x q[1];"] * control_in + ["x q[0];"] * target_in
        lines += ["cx q[1], q[0];", "c[0] = measure q[1];", "c[1] = measure q[0];"]
        assert counts(qasm_to_ir("\n".join(lines), target), 20) == {expected: 20}


# --------------------------------------------------------------------------- decompositions


TWO_QUBIT_CASES: list[tuple[str, np.ndarray[Any, Any]]] = [
    ("cx q[0], q[1];", CX),
    ("CX q[0], q[1];", CX),
    ("cnot q[0], q[1];", CX),
    ("cx q[1], q[0];", CX_REVERSED),
    ("cz q[0], q[1];", CZ),
    ("cz q[1], q[0];", CZ),
    ("cp(pi) q[0], q[1];", CZ),
    ("cp(0.7) q[0], q[1];", cphase(0.7)),
    ("cp(-2.1) q[1], q[0];", cphase(-2.1)),
    ("cphase(pi/3) q[0], q[1];", cphase(PI / 3)),
    ("cu1(1.1) q[0], q[1];", cphase(1.1)),
    ("iswap q[0], q[1];", ISWAP),
    ("iswap q[1], q[0];", ISWAP),
    ("swap q[0], q[1];", SWAP),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("statement", "expected"), TWO_QUBIT_CASES)
def test_two_qubit_decompositions(target: str, statement: str, expected: np.ndarray[Any, Any]) -> None:
    circuit = qasm_to_ir(f"qubit[2] q;\n{statement}", target)
    assert_native(circuit, target)
    assert_equal_up_to_phase(circuit_unitary(circuit), expected)


SINGLE_QUBIT_CASES: list[tuple[str, np.ndarray[Any, Any]]] = [
    ("h", H),
    ("x", X),
    ("y", Y),
    ("z", Z),
    ("s", S),
    ("sdg", S.conj().T),
    ("t", T),
    ("tdg", T.conj().T),
    ("sx", SX),
    ("sxdg", SX.conj().T),
    ("x90", rot(X, PI / 2)),
    ("y_minus_90", rot(Y, -PI / 2)),
    ("virtual_z(0.4)", rot(Z, 0.4)),
    ("rx(0.3)", rot(X, 0.3)),
    ("ry(-1.2)", rot(Y, -1.2)),
    ("rz(2.5)", rot(Z, 2.5)),
    ("p(0.9)", np.diag([1, cmath.exp(0.9j)])),
    ("phase(0.9)", np.diag([1, cmath.exp(0.9j)])),
    ("u1(0.9)", np.diag([1, cmath.exp(0.9j)])),
    ("u2(0.2, 0.5)", u3(PI / 2, 0.2, 0.5)),
    ("u3(1.1, 0.2, -0.7)", u3(1.1, 0.2, -0.7)),
    ("U(1.1, 0.2, -0.7)", u3(1.1, 0.2, -0.7)),
    ("u(0.3, 2.0, 1.0)", u3(0.3, 2.0, 1.0)),
    ("id", np.eye(2)),
    ("i", np.eye(2)),
    ("id(40)", np.eye(2)),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("gate", "expected"), SINGLE_QUBIT_CASES)
def test_single_qubit_conversions(target: str, gate: str, expected: np.ndarray[Any, Any]) -> None:
    circuit = qasm_to_ir(f"qubit q;\n{gate} q;", target)
    assert_native(circuit, target)
    assert_equal_up_to_phase(circuit_unitary(circuit), expected)


def test_native_cnot_target_gates_stay_native() -> None:
    circuit = qasm_to_ir(
        "qubit[2] q; x90 q[0]; y_minus_90 q[1]; virtual_z(0.1) q[0]; cnot q[0], q[1];", "cnot"
    )
    assert [g.gate for g in circuit.gates] == ["x90", "y_minus_90", "virtual_z", "cnot"]


def test_native_gates_pass_through_on_their_target() -> None:
    assert [g.gate for g in qasm_to_ir("qubit[2] q; cz q[0], q[1];", "cz").gates] == ["cz"]
    assert [g.gate for g in qasm_to_ir("qubit[2] q; iswap q[0], q[1];", "iswap").gates] == ["iswap"]
    circuit = qasm_to_ir("qubit[2] q; cp(0.5) q[0], q[1];", "pcz")
    assert [(g.gate, g.params) for g in circuit.gates] == [("cp", (0.5,))]
    assert [(g.gate, g.params) for g in qasm_to_ir("qubit[2] q; cz q[0], q[1];", "pcz").gates] == [
        ("cp", (PI,))
    ]


def test_cz_target_cnot_is_ry_cz_ry() -> None:
    circuit = qasm_to_ir("qubit[2] q; cx q[0], q[1];", "cz")
    assert [(g.gate, g.qubits, g.params) for g in circuit.gates] == [
        ("ry", (1,), (-PI / 2,)),
        ("cz", (0, 1), ()),
        ("ry", (1,), (PI / 2,)),
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_random_program_matches_reference_unitary(target: str) -> None:
    rng = np.random.default_rng(17)
    names = ["h", "x", "s", "t", "sdg", "cx", "cz", "swap", "iswap", "cp", "u3", "rx"]
    lines, expected = ["qubit[3] q;"], np.eye(8, dtype=complex)
    for _ in range(30):
        name = str(rng.choice(names))
        if name in ("cx", "cz", "swap", "iswap", "cp"):
            a, b = (int(v) for v in rng.choice(3, size=2, replace=False))
            angle = float(rng.uniform(-PI, PI))
            params = f"({angle!r})" if name == "cp" else ""
            lines.append(f"{name}{params} q[{a}], q[{b}];")
            matrix = {"cx": CX, "cz": CZ, "swap": SWAP, "iswap": ISWAP, "cp": cphase(angle)}[name]
            qubits = [a, b]
        else:
            q = int(rng.integers(3))
            angles = [float(v) for v in rng.uniform(-PI, PI, size=3)]
            if name == "u3":
                lines.append(f"u3({angles[0]!r}, {angles[1]!r}, {angles[2]!r}) q[{q}];")
                matrix = u3(*angles)
            elif name == "rx":
                lines.append(f"rx({angles[0]!r}) q[{q}];")
                matrix = rot(X, angles[0])
            else:
                lines.append(f"{name} q[{q}];")
                matrix = {"h": H, "x": X, "s": S, "t": T, "sdg": S.conj().T}[name]
            qubits = [q]
        order = qubits + [k for k in range(3) if k not in qubits]
        full = np.kron(matrix, np.eye(2 ** (3 - len(qubits)))).reshape([2] * 6)
        inverse = list(np.argsort(order))
        expected = full.transpose(inverse + [3 + i for i in inverse]).reshape(8, 8) @ expected
    circuit = qasm_to_ir("\n".join(lines), target)
    assert_native(circuit, target)
    assert_equal_up_to_phase(circuit_unitary(circuit), expected)


# --------------------------------------------------------------------------- syntax


def test_measurements_follow_classical_bit_order() -> None:
    source = """
    qubit[3] q;
    bit[3] c;
    measure q[0] -> c[2];
    c[0] = measure q[2];
    measure q[1] -> c[1];
    """
    assert qasm_to_ir(source, "cz").measurements == (2, 1, 0)


def test_several_registers_are_flattened_in_declaration_order() -> None:
    source = """
    qubit[2] a;
    qubit b;
    bit[1] x;
    bit[2] y;
    x[0] = measure b;
    y = measure a;
    """
    circuit = qasm_to_ir(source, "cz")
    assert circuit.num_qubits == 3
    assert circuit.measurements == (2, 0, 1)


def test_measure_without_destination_comes_after_named_bits() -> None:
    source = "qubit[3] q; bit c; measure q[2]; measure q[0]; c = measure q[1];"
    assert qasm_to_ir(source, "cz").measurements == (1, 2, 0)


def test_measure_whole_register_without_destination() -> None:
    assert qasm_to_ir("qubit[2] q; measure q;", "cz").measurements == (0, 1)


def test_no_measurement_gives_an_empty_list() -> None:
    assert qasm_to_ir("qubit q; x q;", "cz").measurements == ()


def test_qasm2_registers() -> None:
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    source += "h q[0];\nCX q[0],q[1];\nmeasure q -> c;\n"
    circuit = qasm_to_ir(source, "cnot")
    assert set(counts(circuit)) == {"00", "11"}


def test_broadcast_over_registers() -> None:
    circuit = qasm_to_ir("qubit[3] q; x q; measure q;", "cz")
    assert counts(circuit, 10) == {"111": 10}
    circuit = qasm_to_ir("qubit[2] a; qubit[2] b; x a; cx a, b; measure b;", "cnot")
    assert counts(circuit, 10) == {"11": 10}
    circuit = qasm_to_ir("qubit c; qubit[2] t; x c; cx c, t; measure t;", "cnot")
    assert counts(circuit, 10) == {"11": 10}


def test_comments_barrier_and_whitespace() -> None:
    source = """// leading comment
    OPENQASM 3; /* inline */ qubit[2]
        q;   // declaration split over lines
    barrier q;
    /* a
       multi-line
       comment */ x q[1]; barrier q[0], q[1];
    measure q;
    """
    assert counts(qasm_to_ir(source, "iswap"), 10) == {"01": 10}


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("pi", PI),
        ("π", PI),
        ("-pi/2", -PI / 2),
        ("pi / 4", PI / 4),
        ("2*pi/3", 2 * PI / 3),
        ("-(pi - 1) * 2", -(PI - 1) * 2),
        ("--1", 1.0),
        ("+0.5", 0.5),
        (".5", 0.5),
        ("1e-3", 1e-3),
        ("2.5E2", 250.0),
        ("3", 3.0),
        ("tau/2", PI),
        ("1 - 2 - 3", -4.0),
        ("8 / 2 / 2", 2.0),
        ("1 + 2 * 3", 7.0),
    ],
)
def test_angle_expressions(expression: str, value: float) -> None:
    circuit = qasm_to_ir(f"qubit q;\nrz({expression}) q;", "cz")
    assert circuit.gates[0].params[0] == pytest.approx(value)


@pytest.mark.parametrize(
    "expression",
    ["pi pi", "(", "(1", "1)", "", "1/0", "sin(1)", "__import__('os')", "1e999*10", "x", "2pi", "1..2"],
)
def test_bad_angle_expressions_name_the_line(expression: str) -> None:
    with pytest.raises(IRError, match=r"^line 2: "):
        qasm_to_ir(f"qubit q;\nrx({expression}) q;", "cz")


def test_metadata() -> None:
    circuit = qasm_to_ir(BELL, "cz")
    assert circuit.metadata.source_hash == hashlib.sha256(BELL.encode()).hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", circuit.metadata.compiled_at)
    assert circuit.metadata.optimization_level == 0
    assert qasm_to_ir(BELL, "cz", source_hash="given").metadata.source_hash == "given"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("qubit[2] q;\nh q[0];\nx q[1];\nfoo q[0];\n", "line 4: unknown gate 'foo'"),
        ("qubit q;\n\n/* one\ntwo */\nbar q;", "line 5: unknown gate 'bar'"),
        ("qubit q;\nrx q;", "line 2: gate 'rx' takes 1 parameter(s), got 0"),
        ("qubit q;\nh(0.1) q;", "line 2: gate 'h' takes 0 parameter(s), got 1"),
        ("qubit[2] q;\ncx q[0];", "line 2: gate 'cx' acts on 2 qubit(s), got 1"),
        ("qubit[2] q;\nh q[0], q[1];", "line 2: gate 'h' acts on 1 qubit(s), got 2"),
        ("qubit[2] q;\ncx q[1], q[1];", "line 2: gate 'cx' names qubit q[1] twice"),
        ("qubit[2] q;\nh r[0];", "line 2: unknown qubit register 'r'"),
        ("qubit[2] q;\nh q[2];", "line 2: q[2] is outside qubit register 'q' of size 2"),
        ("qubit[2] q;\nbit c;\nmeasure q[0] -> d[0];", "line 3: unknown bit register 'd'"),
        ("qubit[2] q;\nbit c;\nc = measure q;", "line 3: measure of 2 qubit(s) into 1 bit(s)"),
        ("qubit[2] q;\nh q[0]", "line 2: statement 'h q[0]' does not end with ';'"),
        ("qubit q;\n/* never closed\nx q;", "line 2: unterminated /* comment"),
        ("qubit q;\nqubit q;", "line 2: register 'q' is declared twice"),
        ("qubit q;\nbit q;", "line 2: register 'q' is declared twice"),
        ("qubit[0] q;", "line 1: register 'q' must have at least one qubit"),
        ("qubit[30] a;\nqubit[21] b;", "line 2: 51 qubits declared; the IR allows at most 50"),
        ("OPENQASM 4.0;\nqubit q;", "line 1: unsupported OpenQASM version '4.0'"),
        ("qubit q;\nreset q;", "line 2: unsupported statement 'reset q'"),
        ("qubit[2] q;\nctrl @ x q[0], q[1];", "line 2: unsupported statement"),
        ("gate g a { x a; }\nqubit q;", "line 1: unsupported statement"),
        ("qubit q;\nccx q, q, q;", "line 2: unknown gate 'ccx'"),
        ("qubit q q;", "line 1: malformed qubit statement"),
        ("qubit q;\n1 + 2;", "line 2: cannot parse statement '1 + 2'"),
        ("bit c;", "no qubits declared"),
        ("", "no qubits declared"),
    ],
)
def test_errors_name_the_line(source: str, message: str) -> None:
    with pytest.raises(IRError) as info:
        qasm_to_ir(source, "cz")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_target() -> None:
    with pytest.raises(IRError, match="Unknown target 'foo'; expected one of cz, iswap, pcz, cnot"):
        qasm_to_ir(BELL, "foo")


def test_long_statements_are_not_echoed_whole() -> None:
    with pytest.raises(IRError) as info:
        qasm_to_ir("qubit q;\n" + "+" * 10_000 + ";", "cz")
    assert len(str(info.value)) < 200
