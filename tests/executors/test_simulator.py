"""The state-vector simulator against states whose outcomes are known exactly or analytically."""

from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from coda_bridge.circuits.ir import GATE_SHAPES, Circuit
from coda_bridge.errors import ExecutorError
from coda_bridge.executors import StateVectorExecutor, call_run
from coda_bridge.executors.simulator import create_executor, final_state, gate_unitary

SHOTS = 4000
#: Five standard deviations of a binomial proportion at ``SHOTS`` shots, p = 1/2.
TOLERANCE = 5 * math.sqrt(0.25 / SHOTS)


def circuit(
    gates: list[tuple[str, list[int], list[float]]], measurements: list[int], *, num_qubits: int = 2
) -> Circuit:
    """A cnot-target circuit (the richest gate set) or, when needed, any target that admits the gates."""
    names = {name for name, _, _ in gates}
    target = next(
        t
        for t, legal in (
            ("cnot", {"rx", "ry", "rz", "x90", "y_minus_90", "virtual_z", "cnot", "id"}),
            ("cz", {"rx", "ry", "rz", "cz", "id"}),
            ("iswap", {"rx", "ry", "rz", "iswap", "id"}),
            ("pcz", {"rx", "ry", "rz", "cp", "id"}),
        )
        if names <= legal
    )
    return Circuit(
        target=target,
        num_qubits=num_qubits,
        gates=[{"gate": g, "qubits": q, "params": p} for g, q, p in gates],
        measurements=measurements,
        metadata={"source_hash": "t", "compiled_at": "2026-01-01T00:00:00Z"},
    )


def run(c: Circuit, shots: int = SHOTS, seed: int = 7) -> dict[str, int]:
    result = StateVectorExecutor(seed=seed).run(c, shots)
    assert sum(result.counts.values()) == shots == result.shots_completed
    assert result.execution_time_ms >= 0
    return result.counts


PI = math.pi
X = ("rx", PI)


def test_bell_state_gives_only_00_and_11_about_half_each() -> None:
    counts = run(circuit([("ry", [0], [PI / 2]), ("cnot", [0, 1], [])], [0, 1]))
    assert set(counts) <= {"00", "11"}
    assert abs(counts["00"] / SHOTS - 0.5) < TOLERANCE


def test_bell_state_with_cz() -> None:
    gates = [("ry", [0], [PI / 2]), ("ry", [1], [-PI / 2]), ("cz", [0, 1], []), ("ry", [1], [PI / 2])]
    counts = run(circuit(gates, [0, 1]))
    assert set(counts) == {"00", "11"}


def test_ghz_on_three_qubits() -> None:
    gates = [("ry", [0], [PI / 2]), ("cnot", [0, 1], []), ("cnot", [1, 2], [])]
    counts = run(circuit(gates, [0, 1, 2], num_qubits=3))
    assert set(counts) == {"000", "111"}
    assert abs(counts["000"] / SHOTS - 0.5) < TOLERANCE


@pytest.mark.parametrize(
    ("control_in", "target_in", "expected"),
    [(0, 0, "00"), (0, 1, "01"), (1, 0, "11"), (1, 1, "10")],
)
@pytest.mark.parametrize("control", [0, 1])
def test_cnot_truth_table_both_orders(control: int, control_in: int, target_in: int, expected: str) -> None:
    target = 1 - control
    gates = []
    if control_in:
        gates.append(("rx", [control], [PI]))
    if target_in:
        gates.append(("rx", [target], [PI]))
    gates.append(("cnot", [control, target], []))
    assert run(circuit(gates, [control, target]), shots=50) == {expected: 50}


def test_protocol_bit_order_example() -> None:
    # measurements [ctrl, tgt], only the target flipped -> "01"
    assert run(circuit([("rx", [1], [PI])], [0, 1]), shots=10) == {"01": 10}


def test_bit_order_follows_measurement_list() -> None:
    c = circuit([("rx", [0], [PI])], [1, 0])
    assert run(c, shots=10) == {"01": 10}
    c = circuit([("rx", [0], [PI])], [0, 1])
    assert run(c, shots=10) == {"10": 10}


def test_partial_and_repeated_measurements() -> None:
    c = circuit([("rx", [2], [PI])], [2, 2, 0], num_qubits=3)
    assert run(c, shots=10) == {"110": 10}


def test_no_measurements_gives_the_empty_key() -> None:
    assert run(circuit([("rx", [0], [PI])], []), shots=5) == {"": 5}


def test_iswap_moves_the_excitation() -> None:
    c = circuit([("rx", [0], [PI]), ("iswap", [0, 1], [])], [0, 1])
    assert run(c, shots=20) == {"01": 20}


def test_iswap_phase_is_i() -> None:
    c = circuit([("rx", [0], [PI]), ("iswap", [0, 1], [])], [0, 1])
    state = final_state(c)
    # rx(pi)|0> = -i|1>; iswap |10> -> i|01>; so the amplitude of |01> is 1
    assert np.allclose(state, [0, 1, 0, 0])


@pytest.mark.parametrize("lam", [PI, PI / 2, 0.3])
def test_cp_phase_kicks_back_into_interference(lam: float) -> None:
    # |+>|1>, cp(lam) puts phase e^{i lam} on |11>; ry(-pi/2) on qubit 0 turns it into P(q0=1)
    gates = [("ry", [0], [PI / 2]), ("rx", [1], [PI]), ("cp", [0, 1], [lam]), ("ry", [0], [-PI / 2])]
    c = circuit(gates, [0])
    state = final_state(c).reshape(2, 2)
    p1 = float(np.sum(np.abs(state[1]) ** 2))
    assert p1 == pytest.approx((1 - math.cos(lam)) / 2, abs=1e-12)
    counts = run(c)
    assert abs(counts.get("1", 0) / SHOTS - p1) < TOLERANCE


def test_cp_pi_equals_cz() -> None:
    assert np.allclose(gate_unitary("cp", [PI]), gate_unitary("cz"))


@pytest.mark.parametrize("theta", [0.0, 0.4, PI / 3, PI / 2, 2.0, PI])
@pytest.mark.parametrize("axis", ["rx", "ry"])
def test_rotation_probabilities(axis: str, theta: float) -> None:
    counts = run(circuit([(axis, [0], [theta])], [0]))
    expected = math.sin(theta / 2) ** 2
    assert abs(counts.get("1", 0) / SHOTS - expected) < TOLERANCE


def test_rz_changes_phase_not_populations() -> None:
    gates = [("ry", [0], [PI / 2]), ("rz", [0], [PI]), ("ry", [0], [PI / 2])]
    # rz(pi) maps |+> to |->, which ry(pi/2) sends to |0>
    assert run(circuit(gates, [0]), shots=20) == {"0": 20}


@pytest.mark.parametrize(
    ("native", "equivalent"),
    [
        (("x90", []), ("rx", [PI / 2])),
        (("y_minus_90", []), ("ry", [-PI / 2])),
        (("virtual_z", [0.7]), ("rz", [0.7])),
    ],
)
def test_cnot_target_single_qubit_gates(
    native: tuple[str, list[float]], equivalent: tuple[str, list[float]]
) -> None:
    assert np.allclose(gate_unitary(*native), gate_unitary(*equivalent))


def test_id_is_identity_whatever_the_duration() -> None:
    assert np.allclose(gate_unitary("id", [1e-6]), np.eye(2))
    c = circuit([("rx", [0], [0.9]), ("id", [0], [40.0])], [0])
    assert np.allclose(final_state(c), final_state(circuit([("rx", [0], [0.9])], [0])))


@pytest.mark.parametrize("name", sorted(GATE_SHAPES))
def test_every_gate_unitary_is_unitary(name: str) -> None:
    u = gate_unitary(name, [0.37] * GATE_SHAPES[name][1])
    assert np.allclose(u @ u.conj().T, np.eye(u.shape[0]))


def test_standard_rotation_matrices() -> None:
    t = 0.8
    c, s = math.cos(t / 2), math.sin(t / 2)
    assert np.allclose(gate_unitary("rx", [t]), [[c, -1j * s], [-1j * s, c]])
    assert np.allclose(gate_unitary("ry", [t]), [[c, -s], [s, c]])
    assert np.allclose(gate_unitary("rz", [t]), np.diag([np.exp(-1j * t / 2), np.exp(1j * t / 2)]))


def _full_unitary(c: Circuit) -> np.ndarray[Any, Any]:
    """Reference: the circuit's matrix built with kron products, qubit 0 most significant."""
    n = c.num_qubits
    total = np.eye(2**n, dtype=complex)
    for g in c.gates:
        u = gate_unitary(g.gate, g.params)
        if len(g.qubits) == 1:
            ops = [u if q == g.qubits[0] else np.eye(2) for q in range(n)]
            full = ops[0]
            for op in ops[1:]:
                full = np.kron(full, op)
        else:
            # permute the basis so the gate's qubits come first, apply, permute back
            a, b = g.qubits
            order = [a, b] + [q for q in range(n) if q not in (a, b)]
            full = np.kron(u, np.eye(2 ** (n - 2))).reshape([2] * (2 * n))
            inverse = np.argsort(order)
            full = full.transpose(list(inverse) + [n + i for i in inverse]).reshape(2**n, 2**n)
        total = full @ total
    return total


def test_tensor_application_matches_full_matrices_on_random_circuit() -> None:
    rng = np.random.default_rng(3)
    gates: list[tuple[str, list[int], list[float]]] = []
    for _ in range(40):
        name = str(rng.choice(["rx", "ry", "rz", "x90", "y_minus_90", "virtual_z", "cnot"]))
        if name == "cnot":
            a, b = (int(q) for q in rng.choice(4, size=2, replace=False))
            gates.append((name, [a, b], []))
        else:
            n_params = GATE_SHAPES[name][1]
            gates.append((name, [int(rng.integers(4))], [float(rng.uniform(-PI, PI))] * n_params))
    c = circuit(gates, [0], num_qubits=4)
    assert np.allclose(final_state(c), _full_unitary(c)[:, 0])


@pytest.mark.parametrize("name", ["cz", "cp", "iswap"])
def test_two_qubit_gates_on_reversed_and_distant_qubits(name: str) -> None:
    rng = np.random.default_rng(5)
    prep = [("ry", [q], [float(rng.uniform(0, PI))]) for q in range(3)]
    prep += [("rx", [q], [float(rng.uniform(0, PI))]) for q in range(3)]
    params = [0.9] if name == "cp" else []
    for qubits in ([2, 0], [0, 2], [1, 2], [2, 1]):
        c = circuit([*prep, (name, qubits, params)], [0], num_qubits=3)
        assert np.allclose(final_state(c), _full_unitary(c)[:, 0])


def test_counts_sum_to_shots_and_timing_is_measured() -> None:
    c = circuit([("ry", [q], [0.3 * (q + 1)]) for q in range(3)], [0, 1, 2], num_qubits=3)
    result = StateVectorExecutor(seed=1).run(c, 1234)
    assert sum(result.counts.values()) == 1234
    assert result.shots_completed == 1234
    assert isinstance(result.execution_time_ms, float)
    assert all(len(k) == 3 and set(k) <= {"0", "1"} for k in result.counts)


def test_zero_shots() -> None:
    result = StateVectorExecutor(seed=1).run(circuit([], [0]), 0)
    assert result.counts == {}
    assert result.shots_completed == 0


def test_seed_makes_runs_reproducible() -> None:
    c = circuit([("ry", [0], [1.1]), ("ry", [1], [2.2])], [0, 1])
    first, second = StateVectorExecutor(seed=42), StateVectorExecutor(seed=42)
    assert [first.run(c, 500).counts for _ in range(3)] == [second.run(c, 500).counts for _ in range(3)]
    assert StateVectorExecutor(seed=43).run(c, 500).counts != StateVectorExecutor(seed=42).run(c, 500).counts


def test_too_many_qubits_names_both_numbers() -> None:
    c = circuit([], [0], num_qubits=5)
    with pytest.raises(ExecutorError, match=r"5 qubits.*max_qubits=4"):
        StateVectorExecutor(max_qubits=4).run(c, 10)


def test_bad_shots() -> None:
    with pytest.raises(ExecutorError, match="shots"):
        StateVectorExecutor().run(circuit([], [0]), -1)


def test_batch_run_returns_one_result_per_job() -> None:
    bell = circuit([("ry", [0], [PI / 2]), ("cnot", [0, 1], [])], [0, 1])
    flip = circuit([("rx", [0], [PI])], [0])
    results = StateVectorExecutor(seed=3).batch_run([(bell, 100), (flip, 7)])
    assert len(results) == 2
    assert set(results[0].counts) <= {"00", "11"}
    assert results[1].counts == {"1": 7}


def test_call_run_accepts_the_simulator() -> None:
    result = call_run(StateVectorExecutor(seed=0), circuit([("rx", [0], [PI])], [0]), 3)
    assert result.counts == {"1": 3}


def test_cancel_stops_a_running_job() -> None:
    executor = StateVectorExecutor(seed=0, max_qubits=20)
    gates = [("rx", [i % 18], [0.1]) for i in range(20_000)]
    c = circuit(gates, [0], num_qubits=18)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            executor.run(c, 10)
        except ExecutorError as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    started = time.perf_counter()
    thread.start()
    time.sleep(0.2)
    executor.cancel_current_job()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.perf_counter() - started < 5
    assert [str(e) for e in errors] == ["cancelled"]


def test_cancel_between_jobs_does_not_affect_the_next_job() -> None:
    executor = StateVectorExecutor(seed=0)
    executor.cancel_current_job()
    assert executor.run(circuit([("rx", [0], [PI])], [0]), 4).counts == {"1": 4}


def test_create_executor_reads_settings() -> None:
    executor = create_executor(SimpleNamespace(simulator_seed=9, simulator_max_qubits=3))
    assert isinstance(executor, StateVectorExecutor)
    assert executor.seed == 9
    assert executor.max_qubits == 3
    default = create_executor()
    assert default.seed is None
    assert default.max_qubits == 24
