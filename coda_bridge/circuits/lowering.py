"""How OpenQASM gates become the native gates of one target.

The gate table maps each supported OpenQASM gate to the native gates that
replace it; the decompositions are exact up to a global phase. The parser in
:mod:`coda_bridge.circuits.qasm` looks gates up here, so either side reads on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .ir import LEGAL_GATES, Gate

__all__ = ["GATES", "Lowering", "id_without_duration"]

PI = math.pi


@dataclass(slots=True)
class Lowering:
    """Emits native gates of one target; the decompositions are exact up to a global phase."""

    target: str
    gates: list[Gate] = field(default_factory=list)

    def native(self, name: str, qubits: tuple[int, ...], params: tuple[float, ...] = ()) -> None:
        """Append one gate as is; the target's legality is checked when the circuit is built."""
        self.gates.append(Gate(gate=name, qubits=qubits, params=tuple(float(p) for p in params)))

    # single qubit: rx, ry, rz are legal on every target
    def rx(self, q: int, theta: float) -> None:
        self.native("rx", (q,), (theta,))

    def ry(self, q: int, theta: float) -> None:
        self.native("ry", (q,), (theta,))

    def rz(self, q: int, theta: float) -> None:
        self.native("rz", (q,), (theta,))

    def h(self, q: int) -> None:
        """H = RY(pi/2) . Z."""
        self.rz(q, PI)
        self.ry(q, PI / 2)

    def u(self, q: int, theta: float, phi: float, lam: float) -> None:
        """U(theta, phi, lambda) = RZ(phi) . RY(theta) . RZ(lambda)."""
        self.rz(q, lam)
        self.ry(q, theta)
        self.rz(q, phi)

    # two qubit
    def cz(self, a: int, b: int) -> None:
        """Controlled-Z (symmetric in its qubits)."""
        if self.target == "cz":
            self.native("cz", (a, b))
        elif self.target == "pcz":
            self.native("cp", (a, b), (PI,))
        else:  # CZ = (I x RY(-pi/2)) . CNOT . (I x RY(pi/2))
            self.ry(b, PI / 2)
            self.cnot(a, b)
            self.ry(b, -PI / 2)

    def cnot(self, control: int, target: int) -> None:
        """Controlled-X on ``target``."""
        if self.target == "cnot":
            self.native("cnot", (control, target))
        elif self.target == "iswap":
            # two iSWAPs (Schuch and Siewert, PRA 67, 032301)
            self.rz(target, PI / 2)
            self.native("iswap", (control, target))
            self.rx(control, -PI / 2)
            self.native("iswap", (control, target))
            self.rz(control, PI / 2)
            self.rz(target, PI / 2)
            self.rx(target, -PI / 2)
        else:  # CNOT = (I x RY(pi/2)) . CZ . (I x RY(-pi/2))
            self.ry(target, -PI / 2)
            self.cz(control, target)
            self.ry(target, PI / 2)

    def cp(self, a: int, b: int, lam: float) -> None:
        """Controlled phase diag(1, 1, 1, e^{i lam}): two CNOTs around RZ(-lam/2), then RZ(lam/2) on both."""
        if self.target == "pcz":
            self.native("cp", (a, b), (lam,))
            return
        self.cnot(a, b)
        self.rz(b, -lam / 2)
        self.cnot(a, b)
        self.rz(a, lam / 2)
        self.rz(b, lam / 2)

    def iswap(self, a: int, b: int) -> None:
        """iSWAP = (S x S), H on ``a``, CNOT(a, b), CNOT(b, a), H on ``b``, in time order."""
        if self.target == "iswap":
            self.native("iswap", (a, b))
            return
        self.rz(a, PI / 2)
        self.rz(b, PI / 2)
        self.h(a)
        self.cnot(a, b)
        self.cnot(b, a)
        self.h(b)

    def swap(self, a: int, b: int) -> None:
        """SWAP as three alternating CNOTs."""
        self.cnot(a, b)
        self.cnot(b, a)
        self.cnot(a, b)


#: Emits one QASM gate application: (lowering, flat qubit indices, evaluated params).
_Emit = Callable[[Lowering, list[int], list[float]], None]


def _single(rotation: str, angle: float) -> _Emit:
    """A fixed rotation, for named gates like ``x`` and ``s``."""

    def emit(out: Lowering, qubits: list[int], _params: list[float]) -> None:
        out.native(rotation, (qubits[0],), (angle,))

    return emit


def _native_or(name: str, fallback: _Emit) -> _Emit:
    """The native gate when the target has it, else ``fallback``."""

    def emit(out: Lowering, qubits: list[int], params: list[float]) -> None:
        if name in LEGAL_GATES[out.target]:
            out.native(name, tuple(qubits), tuple(params))
        else:
            fallback(out, qubits, params)

    return emit


#: QASM gate name -> (qubits, params, emitter).
GATES: dict[str, tuple[int, int, _Emit]] = {
    # native gates of any target
    "rx": (1, 1, lambda o, q, p: o.rx(q[0], p[0])),
    "ry": (1, 1, lambda o, q, p: o.ry(q[0], p[0])),
    "rz": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "id": (1, 1, lambda o, q, p: o.native("id", (q[0],), (p[0],))),
    "x90": (1, 0, _native_or("x90", _single("rx", PI / 2))),
    "y_minus_90": (1, 0, _native_or("y_minus_90", _single("ry", -PI / 2))),
    "virtual_z": (1, 1, _native_or("virtual_z", lambda o, q, p: o.rz(q[0], p[0]))),
    "cz": (2, 0, lambda o, q, p: o.cz(q[0], q[1])),
    "cnot": (2, 0, lambda o, q, p: o.cnot(q[0], q[1])),
    "cp": (2, 1, lambda o, q, p: o.cp(q[0], q[1], p[0])),
    "iswap": (2, 0, lambda o, q, p: o.iswap(q[0], q[1])),
    # standard gates
    "i": (1, 0, lambda o, q, p: o.native("id", (q[0],), (0.0,))),
    "x": (1, 0, _single("rx", PI)),
    "y": (1, 0, _single("ry", PI)),
    "z": (1, 0, _single("rz", PI)),
    "h": (1, 0, lambda o, q, p: o.h(q[0])),
    "s": (1, 0, _single("rz", PI / 2)),
    "sdg": (1, 0, _single("rz", -PI / 2)),
    "t": (1, 0, _single("rz", PI / 4)),
    "tdg": (1, 0, _single("rz", -PI / 4)),
    "sx": (1, 0, _single("rx", PI / 2)),
    "sxdg": (1, 0, _single("rx", -PI / 2)),
    "p": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "phase": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "u1": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "u2": (1, 2, lambda o, q, p: o.u(q[0], PI / 2, p[0], p[1])),
    "u3": (1, 3, lambda o, q, p: o.u(q[0], p[0], p[1], p[2])),
    "u": (1, 3, lambda o, q, p: o.u(q[0], p[0], p[1], p[2])),
    "U": (1, 3, lambda o, q, p: o.u(q[0], p[0], p[1], p[2])),
    "cx": (2, 0, lambda o, q, p: o.cnot(q[0], q[1])),
    "CX": (2, 0, lambda o, q, p: o.cnot(q[0], q[1])),
    "cphase": (2, 1, lambda o, q, p: o.cp(q[0], q[1], p[0])),
    "cu1": (2, 1, lambda o, q, p: o.cp(q[0], q[1], p[0])),
    "swap": (2, 0, lambda o, q, p: o.swap(q[0], q[1])),
}


def id_without_duration(out: Lowering, qubits: list[int], params: list[float]) -> None:
    """``id q;`` of stdgates.inc has no duration; the native ``id`` gets 0."""
    out.native("id", (qubits[0],), (params[0] if params else 0.0,))
