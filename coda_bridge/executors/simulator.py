"""A numpy state-vector simulator of every native gate, usable as the node's executor.

Gates act on a ``(2,) * n`` tensor by contraction over their own axes, so no
``2**n x 2**n`` matrix is ever built; diagonal gates are a broadcast multiply.
"""

from __future__ import annotations

import cmath
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..circuits.ir import Circuit, Gate
from ..errors import ExecutorError
from .base import ExecutionResult

__all__ = [
    "DEFAULT_MAX_QUBITS",
    "StateVectorExecutor",
    "create_executor",
    "final_state",
    "gate_unitary",
]

#: Default largest circuit simulated: 2**24 amplitudes are 256 MB of complex128.
DEFAULT_MAX_QUBITS = 24

Matrix = NDArray[np.complex128]
#: Gates whose unitary is diagonal, applied as an element-wise multiply.
_DIAGONAL_GATES = frozenset({"rz", "virtual_z", "cz", "cp"})


def _rx(theta: float) -> Matrix:
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    return np.array([[c, -1j * s], [-1j * s, c]], dtype=np.complex128)


def _ry(theta: float) -> Matrix:
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    return np.array([[c, -s], [s, c]], dtype=np.complex128)


def _rz(theta: float) -> Matrix:
    return np.diag([cmath.exp(-0.5j * theta), cmath.exp(0.5j * theta)]).astype(np.complex128)


def gate_unitary(name: str, params: Sequence[float] = ()) -> Matrix:
    """The unitary of one native gate: 2x2, or 4x4 with the gate's first qubit most significant."""
    if name == "rx":
        return _rx(params[0])
    if name == "ry":
        return _ry(params[0])
    if name in ("rz", "virtual_z"):
        return _rz(params[0])
    if name == "x90":
        return _rx(math.pi / 2)
    if name == "y_minus_90":
        return _ry(-math.pi / 2)
    if name == "id":  # the param is a duration: nothing happens to the state
        return np.eye(2, dtype=np.complex128)
    if name == "cz":
        return np.diag([1, 1, 1, -1]).astype(np.complex128)
    if name == "cp":
        return np.diag([1, 1, 1, cmath.exp(1j * params[0])]).astype(np.complex128)
    if name == "iswap":
        return np.array([[1, 0, 0, 0], [0, 0, 1j, 0], [0, 1j, 0, 0], [0, 0, 0, 1]], dtype=np.complex128)
    if name == "cnot":
        return np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.complex128)
    raise ExecutorError(f"simulator has no gate {name!r}")


def _apply(state: Matrix, gate: Gate) -> Matrix:
    """``state`` after ``gate``; ``state`` has one axis of size 2 per qubit."""
    if gate.gate == "id":
        return state
    unitary = gate_unitary(gate.gate, gate.params)
    axes = gate.qubits
    if gate.gate in _DIAGONAL_GATES:
        diagonal = np.diagonal(unitary).reshape((2,) * len(axes))
        if len(axes) == 2 and axes[0] > axes[1]:
            diagonal = diagonal.T
        shape = [1] * state.ndim
        for axis in axes:
            shape[axis] = 2
        state *= diagonal.reshape(shape)
        return state
    if len(axes) == 1:
        moved = np.tensordot(unitary, state, axes=([1], [axes[0]]))
        return np.ascontiguousarray(np.moveaxis(moved, 0, axes[0]))
    moved = np.tensordot(unitary.reshape(2, 2, 2, 2), state, axes=([2, 3], list(axes)))
    return np.ascontiguousarray(np.moveaxis(moved, [0, 1], list(axes)))


def _initial_state(num_qubits: int) -> Matrix:
    state = np.zeros((2,) * num_qubits, dtype=np.complex128)
    state[(0,) * num_qubits] = 1.0
    return state


def final_state(circuit: Circuit) -> Matrix:
    """The state vector after every gate, flattened with qubit 0 as the most significant bit."""
    state = _initial_state(circuit.num_qubits)
    for gate in circuit.gates:
        state = _apply(state, gate)
    return state.reshape(-1)


class StateVectorExecutor:
    """Exact state-vector simulation with sampled measurements; seeded runs are reproducible.

    Each run draws from its own child of one seed sequence, so a given seed gives the
    same counts for the same sequence of runs, whatever the threads.
    """

    def __init__(self, seed: int | None = None, max_qubits: int = DEFAULT_MAX_QUBITS) -> None:
        if isinstance(max_qubits, bool) or not isinstance(max_qubits, int) or max_qubits < 1:
            raise ExecutorError(f"simulator max_qubits must be a positive integer, got {max_qubits!r}")
        self.seed = seed
        self.max_qubits = max_qubits
        self._seeds = np.random.SeedSequence(seed)
        self._lock = threading.Lock()
        self._running: set[threading.Event] = set()

    def __repr__(self) -> str:
        return f"StateVectorExecutor(seed={self.seed!r}, max_qubits={self.max_qubits})"

    def run(self, ir: Circuit, shots: int) -> ExecutionResult:
        """Simulate ``ir`` and sample ``shots`` outcomes of its measured qubits."""
        started = time.perf_counter()
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise ExecutorError(f"shots must be a non-negative integer, got {shots!r}")
        if ir.num_qubits > self.max_qubits:
            raise ExecutorError(
                f"circuit has {ir.num_qubits} qubits, more than this simulator's max_qubits={self.max_qubits}"
            )
        cancelled = threading.Event()
        with self._lock:
            self._running.add(cancelled)
            rng = np.random.default_rng(self._seeds.spawn(1)[0])
        try:
            state = _initial_state(ir.num_qubits)
            for gate in ir.gates:
                if cancelled.is_set():
                    raise ExecutorError("cancelled")
                state = _apply(state, gate)
            if cancelled.is_set():
                raise ExecutorError("cancelled")
            counts = _sample(state, ir.measurements, shots, rng)
        finally:
            with self._lock:
                self._running.discard(cancelled)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return ExecutionResult(counts=counts, execution_time_ms=elapsed_ms, shots_completed=shots)

    def batch_run(self, jobs: Sequence[tuple[Circuit, int]]) -> list[ExecutionResult]:
        """One result per ``(circuit, shots)`` job, in order."""
        return [self.run(ir, shots) for ir, shots in jobs]

    def cancel_current_job(self) -> None:
        """Make every run in progress stop before its next gate, raising ``ExecutorError("cancelled")``."""
        with self._lock:
            for event in self._running:
                event.set()


def _sample(
    state: Matrix, measurements: Sequence[int], shots: int, rng: np.random.Generator
) -> dict[str, int]:
    """Counts of ``shots`` samples; character i of a key is the outcome of ``measurements[i]``."""
    if not measurements:
        return {"": shots}
    measured = sorted(set(measurements))
    probabilities = np.abs(state) ** 2
    others = tuple(axis for axis in range(state.ndim) if axis not in set(measured))
    marginal = probabilities.sum(axis=others) if others else probabilities
    flat = marginal.reshape(-1)
    flat = flat / flat.sum()
    drawn = rng.multinomial(shots, flat)
    width = len(measured)
    position = {qubit: width - 1 - k for k, qubit in enumerate(measured)}
    shifts = [position[qubit] for qubit in measurements]
    counts: dict[str, int] = {}
    for outcome in np.flatnonzero(drawn):
        index = int(outcome)
        key = "".join("1" if (index >> shift) & 1 else "0" for shift in shifts)
        counts[key] = counts.get(key, 0) + int(drawn[outcome])
    return counts


def create_executor(settings: Any = None) -> StateVectorExecutor:
    """The simulator configured from ``simulator_seed`` and ``simulator_max_qubits`` settings."""
    seed = getattr(settings, "simulator_seed", None)
    max_qubits = getattr(settings, "simulator_max_qubits", None)
    return StateVectorExecutor(
        seed=None if seed in (None, "") else int(seed),
        max_qubits=DEFAULT_MAX_QUBITS if max_qubits in (None, "") else int(max_qubits),
    )
