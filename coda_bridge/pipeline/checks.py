"""What a job message must be before it runs: its shots, and a circuit this QPU can run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..circuits.ir import parse_ir
from ..errors import JobError
from ..settings import Settings

__all__ = ["REFUSAL_FIELD", "SHOWN_MAX_CHARS", "parse_shots", "shown", "validate_job"]

#: How much of a field a log line or an error quotes.
SHOWN_MAX_CHARS = 120
#: ``shots`` as the cloud sends it: ASCII decimal digits, no sign, at most this many.
SHOTS_MAX_DIGITS = 12
_SHOTS = re.compile(rf"[0-9]{{1,{SHOTS_MAX_DIGITS}}}")
#: Set by the bridge on the stand-in of a job it refused at intake (too large): why the job fails.
#: The bridge drops this field from whatever the cloud sends, so only the node sets it.
REFUSAL_FIELD = "coda-bridge:refused"


def shown(value: Any, limit: int = SHOWN_MAX_CHARS) -> str:
    """A field as a log line or an error may quote it: cut to ``limit`` characters, controls escaped."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[: limit - 3]}..."
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def parse_shots(raw: Any, max_shots: int) -> int:
    """``shots`` as sent (ASCII decimal digits) to an int from 1 to ``max_shots``, else :class:`JobError`.

    ``str.isdigit`` would let through digits ``int`` refuses (superscripts) and
    ``int`` alone would take other scripts' digits and underscores: both are refused.
    """
    text = str(raw).strip(" \t\r\n") if raw is not None else ""
    if not _SHOTS.fullmatch(text):
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shown(text, 40)!r}")
    shots = int(text)
    if not 1 <= shots <= max_shots:
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shots}")
    return shots


def validate_job(settings: Settings, fields: Mapping[str, str]) -> tuple[Any, int]:
    """The circuit and shots of a job message, checked against this QPU; else :class:`JobError`."""
    refusal = fields.get(REFUSAL_FIELD)
    if refusal:
        raise JobError(refusal)
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
