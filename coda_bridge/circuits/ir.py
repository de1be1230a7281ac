"""The Native Gate IR, version "1.0" (PROTOCOL.md section 4.3): parse, validate, serialise.

A :class:`Circuit` is immutable and always valid: every rule of the IR is
checked when it is built, so code holding one never re-checks it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from ..errors import IRError

__all__ = [
    "GATE_SHAPES",
    "IR_VERSION",
    "LEGAL_GATES",
    "MAX_QUBITS",
    "TARGETS",
    "Circuit",
    "Gate",
    "Metadata",
    "parse_ir",
]

#: The only IR version this module speaks.
IR_VERSION = "1.0"
#: The native gate sets a circuit may be compiled for.
TARGETS: tuple[str, ...] = ("cz", "iswap", "pcz", "cnot")
#: Largest ``num_qubits`` the IR allows.
MAX_QUBITS = 50
#: Lowest and highest ``metadata.optimization_level``.
MIN_OPTIMIZATION_LEVEL = 0
MAX_OPTIMIZATION_LEVEL = 3
DEFAULT_COMPILER_VERSION = "0.1.0"
DEFAULT_OPTIMIZATION_LEVEL = 2
#: Longest echo of an input value in an error message.
ECHO_MAX_CHARS = 80

#: Gate name -> (number of qubits, number of params).
GATE_SHAPES: Mapping[str, tuple[int, int]] = {
    "rx": (1, 1),
    "ry": (1, 1),
    "rz": (1, 1),
    "cz": (2, 0),
    "iswap": (2, 0),
    "cp": (2, 1),
    "id": (1, 1),
    "x90": (1, 0),
    "y_minus_90": (1, 0),
    "virtual_z": (1, 1),
    "cnot": (2, 0),
}

#: Target -> the gates a circuit for that target may use.
LEGAL_GATES: Mapping[str, frozenset[str]] = {
    "cz": frozenset({"rx", "ry", "rz", "cz", "id"}),
    "iswap": frozenset({"rx", "ry", "rz", "iswap", "id"}),
    "pcz": frozenset({"rx", "ry", "rz", "cp", "id"}),
    "cnot": frozenset({"rx", "ry", "rz", "x90", "y_minus_90", "virtual_z", "cnot", "id"}),
}


def _show(value: object) -> str:
    """``repr(value)`` on one line and cut short, so a huge input is never echoed whole."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__} too large to show>"
    if len(text) > ECHO_MAX_CHARS:
        text = text[: ECHO_MAX_CHARS - 3] + "..."
    return text


def _is_int(value: object) -> bool:
    """True for a real integer; ``True`` and ``1.0`` are not qubit indices."""
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: object) -> object:
    """A numpy-style integer as a plain int; anything else untouched, for the rules to judge."""
    if type(value) is int:
        return value
    if isinstance(value, Integral) and not isinstance(value, (bool, int)):
        return int(value)
    return value


def _as_float(value: object) -> object:
    """A real param as a float, so ``rx(1)`` and ``rx(1.0)`` are the same gate; others untouched."""
    if type(value) is float:
        return value
    if isinstance(value, Real) and not isinstance(value, (bool, float)):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


def _as_tuple(value: object, label: str) -> tuple[Any, ...]:
    """A JSON array as a tuple; anything else is an :class:`IRError`."""
    if not isinstance(value, (list, tuple)):
        raise IRError(f"{label} must be a list, got {_show(value)}")
    return tuple(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """One gate application; its rules are checked by the :class:`Circuit` holding it."""

    gate: str
    qubits: tuple[int, ...]
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("qubits", "params"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise IRError(
                    f"Gate {_show(self.gate)}: {name} must be a list, got {_show(getattr(self, name))}"
                )
        object.__setattr__(self, "qubits", tuple(_as_int(q) for q in self.qubits))
        object.__setattr__(self, "params", tuple(_as_float(p) for p in self.params))

    def to_dict(self) -> dict[str, Any]:
        """The gate as its JSON object."""
        return {"gate": self.gate, "qubits": list(self.qubits), "params": list(self.params)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """Where the circuit came from; informational for executors."""

    source_hash: str
    compiled_at: str
    compiler_version: str = DEFAULT_COMPILER_VERSION
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL

    def __post_init__(self) -> None:
        for name in ("source_hash", "compiled_at", "compiler_version"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise IRError(f"metadata.{name} must be a string, got {_show(value)}")
        level = self.optimization_level
        if not _is_int(level) or not MIN_OPTIMIZATION_LEVEL <= level <= MAX_OPTIMIZATION_LEVEL:
            raise IRError(
                f"metadata.optimization_level must be an integer from {MIN_OPTIMIZATION_LEVEL} "
                f"to {MAX_OPTIMIZATION_LEVEL}, got {_show(level)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The metadata as its JSON object, defaults filled in."""
        return {
            "source_hash": self.source_hash,
            "compiled_at": self.compiled_at,
            "compiler_version": self.compiler_version,
            "optimization_level": self.optimization_level,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Circuit:
    """A whole IR document; building one checks every rule of PROTOCOL.md 4.3."""

    version: str = IR_VERSION
    target: str
    num_qubits: int
    gates: tuple[Gate, ...]
    measurements: tuple[int, ...]
    metadata: Metadata

    def __post_init__(self) -> None:
        gates = _as_tuple(self.gates, "gates")
        object.__setattr__(
            self, "gates", tuple(g if isinstance(g, Gate) else _parse_gate(i, g) for i, g in enumerate(gates))
        )
        measurements = _as_tuple(self.measurements, "measurements")
        object.__setattr__(self, "measurements", tuple(_as_int(q) for q in measurements))
        if not isinstance(self.metadata, Metadata):
            object.__setattr__(self, "metadata", _parse_metadata(self.metadata))
        _check_header(self)
        legal = LEGAL_GATES[self.target]
        for index, gate in enumerate(self.gates):
            _check_gate(index, gate, self.target, legal, self.num_qubits)
        for index, qubit in enumerate(self.measurements):
            if not _is_int(qubit):
                raise IRError(
                    f"Measurement at index {index} must be an integer qubit index, got {_show(qubit)}"
                )
            if not 0 <= qubit < self.num_qubits:
                raise IRError(
                    f"Measurement at index {index} names qubit {qubit}, outside [0, {self.num_qubits})"
                )

    def to_dict(self) -> dict[str, Any]:
        """The circuit as plain JSON-ready data, every default filled in."""
        return {
            "version": self.version,
            "target": self.target,
            "num_qubits": self.num_qubits,
            "gates": [gate.to_dict() for gate in self.gates],
            "measurements": list(self.measurements),
            "metadata": self.metadata.to_dict(),
        }

    def to_json(self) -> str:
        """Compact, stable JSON text: the same circuit always gives the same text."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    # Executors written for the first runtime may call the pydantic names.
    def model_dump(self) -> dict[str, Any]:
        """Alias of :meth:`to_dict` for executors written against a pydantic model."""
        return self.to_dict()

    def model_dump_json(self) -> str:
        """Alias of :meth:`to_json` for executors written against a pydantic model."""
        return self.to_json()


def _check_header(circuit: Circuit) -> None:
    """The version, target, num_qubits and metadata rules."""
    if circuit.version != IR_VERSION:
        raise IRError(f"Unsupported IR version {_show(circuit.version)}; expected '{IR_VERSION}'")
    if not isinstance(circuit.target, str) or circuit.target not in LEGAL_GATES:
        raise IRError(f"Unknown target {_show(circuit.target)}; expected one of {', '.join(TARGETS)}")
    n = circuit.num_qubits
    if not _is_int(n) or not 1 <= n <= MAX_QUBITS:
        raise IRError(f"num_qubits must be an integer from 1 to {MAX_QUBITS}, got {_show(n)}")


def _check_gate(index: int, gate: Gate, target: str, legal: frozenset[str], num_qubits: int) -> None:
    """One gate's rules, in the order: known, legal, shape, qubits, params."""
    name = gate.gate
    if not isinstance(name, str) or name not in GATE_SHAPES:
        raise IRError(f"Unknown gate {_show(name)} at index {index}")
    if name not in legal:
        raise IRError(f"Gate '{name}' not legal for target '{target}' at index {index}")
    n_qubits, n_params = GATE_SHAPES[name]
    if len(gate.qubits) != n_qubits:
        raise IRError(f"Gate '{name}' at index {index} takes {n_qubits} qubit(s), got {len(gate.qubits)}")
    for qubit in gate.qubits:
        if not _is_int(qubit):
            raise IRError(f"Gate '{name}' at index {index} has a non-integer qubit index {_show(qubit)}")
        if not 0 <= qubit < num_qubits:
            raise IRError(f"Gate '{name}' at index {index} acts on qubit {qubit}, outside [0, {num_qubits})")
    if n_qubits == 2 and gate.qubits[0] == gate.qubits[1]:
        raise IRError(f"Gate '{name}' at index {index} names qubit {gate.qubits[0]} twice")
    if len(gate.params) != n_params:
        raise IRError(f"Gate '{name}' at index {index} takes {n_params} param(s), got {len(gate.params)}")
    for param in gate.params:
        if not isinstance(param, float):
            raise IRError(f"Gate '{name}' at index {index} has a non-numeric param {_show(param)}")
        if not math.isfinite(param):
            raise IRError(f"Gate '{name}' at index {index} has a non-finite param {param}")


def parse_ir(data: str | bytes | bytearray | Mapping[str, Any]) -> Circuit:
    """A :class:`Circuit` from JSON text or decoded data; anything invalid is an :class:`IRError`."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IRError(f"IR is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except RecursionError:
            raise IRError("IR JSON is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
            raise IRError(f"IR is not valid JSON: {str(exc).splitlines()[0][:ECHO_MAX_CHARS]}") from None
    if not isinstance(data, Mapping):
        raise IRError(f"IR must be a JSON object, got {type(data).__name__}")
    return Circuit(
        version=data.get("version", IR_VERSION),
        target=_required(data, "target"),
        num_qubits=_required(data, "num_qubits"),
        gates=_required(data, "gates"),
        measurements=_required(data, "measurements"),
        metadata=_required(data, "metadata"),
    )


def _required(data: Mapping[str, Any], key: str, where: str = "") -> Any:
    """``data[key]``, or an :class:`IRError` naming the missing field."""
    if key not in data:
        raise IRError(f"Missing required field '{where}{key}'")
    return data[key]


def _parse_gate(index: int, raw: object) -> Gate:
    """One gate from its JSON object; the rules are checked by :class:`Circuit`."""
    if not isinstance(raw, Mapping):
        raise IRError(f"Gate at index {index} must be an object, got {_show(raw)}")
    for key in ("gate", "qubits"):
        if key not in raw:
            raise IRError(f"Gate at index {index} is missing field '{key}'")
    return Gate(
        gate=raw["gate"],
        qubits=_as_tuple(raw["qubits"], f"Gate at index {index}: qubits"),
        params=_as_tuple(raw.get("params", ()), f"Gate at index {index}: params"),
    )


def _parse_metadata(raw: object) -> Metadata:
    """The metadata from its JSON object, defaults filled in."""
    if not isinstance(raw, Mapping):
        raise IRError(f"metadata must be an object, got {_show(raw)}")
    return Metadata(
        source_hash=_required(raw, "source_hash", "metadata."),
        compiled_at=_required(raw, "compiled_at", "metadata."),
        compiler_version=raw.get("compiler_version", DEFAULT_COMPILER_VERSION),
        optimization_level=raw.get("optimization_level", DEFAULT_OPTIMIZATION_LEVEL),
    )
