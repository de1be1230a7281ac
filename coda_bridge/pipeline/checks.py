"""What a job message must be before it runs: its shots, and a circuit this QPU can run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import JobError
from ..settings import Settings

__all__ = ["parse_shots", "validate_job"]


def parse_shots(raw: Any, max_shots: int) -> int:
    """``shots`` as sent (a decimal string) to an int from 1 to ``max_shots``, else :class:`JobError`."""
    text = str(raw).strip() if raw is not None else ""
    shown = text if len(text) <= 40 else text[:37] + "..."
    if not text.isdigit():
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shown!r}")
    shots = int(text)
    if not 1 <= shots <= max_shots:
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shots}")
    return shots


def validate_job(settings: Settings, fields: Mapping[str, str]) -> tuple[Any, int]:
    """The circuit and shots of a job message, checked against this QPU; else :class:`JobError`."""
    from ..circuits.ir import parse_ir

    shots = parse_shots(fields.get("shots"), settings.max_shots)
    raw_ir = fields.get("ir_json")
    if raw_ir is None:
        raise JobError("message has no ir_json")
    circuit = parse_ir(raw_ir)
    if circuit.target != settings.native_gate_set:
        raise JobError(
            f"Circuit target {circuit.target!r} does not match this QPU's native gate set "
            f"{settings.native_gate_set!r}"
        )
    if circuit.num_qubits > settings.num_qubits:
        raise JobError(f"Circuit needs {circuit.num_qubits} qubits; this QPU has {settings.num_qubits}")
    return circuit, shots
