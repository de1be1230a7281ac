"""``coda-bridge submit``: put one circuit on a QPU's stream through the local cloud simulator.

The circuit comes from an IR JSON file or from OpenQASM 3 (a small subset,
converted here for the chosen target, so a mistake is reported with its
line).  Results are shown as text histograms, also by the demo.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..circuits.ir import parse_ir
from ..circuits.qasm import qasm_to_ir
from ..errors import CodaError, ConfigError, IRError
from .devcloud.admin_client import DevCloudClient

__all__ = ["HISTOGRAM_WIDTH", "format_result", "histogram_lines", "load_circuit", "pick_qpu"]

#: Characters of the longest bar of a histogram.
HISTOGRAM_WIDTH = 30
#: Outcomes shown before the rest are summed into one line.
HISTOGRAM_MAX_ROWS = 16
#: File suffixes read as OpenQASM.
QASM_SUFFIXES = (".qasm", ".qasm3", ".qasm2")


def load_circuit(path: Path, target: str) -> dict[str, Any]:
    """The IR of ``path`` (JSON as is, OpenQASM converted for ``target``), checked against the rules."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    stripped = text.lstrip()
    if path.suffix.lower() in QASM_SUFFIXES or stripped.startswith(("OPENQASM", "//", "qubit", "include")):
        try:
            return qasm_to_ir(text, target).to_dict()
        except IRError as exc:
            raise IRError(f"{path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IRError(f"{path} is neither OpenQASM nor JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return parse_ir(data).to_dict()
    except IRError as exc:
        raise IRError(f"{path}: {exc}") from None


def pick_qpu(client: DevCloudClient, qpu_id: str | None) -> dict[str, Any]:
    """The QPU to submit to: the one named, or the only one the simulator knows."""
    if qpu_id:
        return client.qpu(qpu_id)
    qpus = client.qpus()
    if len(qpus) == 1:
        return qpus[0]
    known = ", ".join(str(q.get("qpu_id")) for q in qpus) or "none"
    raise ConfigError(f"pass --qpu: the simulator at {client.base_url} knows {len(qpus)} QPUs ({known})")


def histogram_lines(counts: Mapping[str, int], width: int = HISTOGRAM_WIDTH) -> list[str]:
    """``bits  ████▌  count`` per outcome, most frequent first."""
    total = sum(counts.values())
    if not total:
        return ["(no shots)"]
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    largest = ordered[0][1]
    key_width = max(len(k) for k in counts) or 1
    lines = []
    for bits, count in ordered[:HISTOGRAM_MAX_ROWS]:
        bar = "█" * max(1, round(width * count / largest)) if count else ""
        lines.append(f"{bits or '-':>{key_width}}  {bar:<{width}}  {count} ({100 * count / total:.1f}%)")
    rest = sum(count for _, count in ordered[HISTOGRAM_MAX_ROWS:])
    if rest:
        lines.append(f"{'...':>{key_width}}  {len(ordered) - HISTOGRAM_MAX_ROWS} more outcomes, {rest} shots")
    return lines


def format_result(result: Mapping[str, Any]) -> str:
    """A result webhook body for people: status, then a histogram or the error."""
    head = f"job {result.get('job_id')}: {result.get('status')}"
    if result.get("status") == "completed":
        shots = result.get("shots_completed")
        elapsed = result.get("execution_time_ms")
        head += f" ({shots} shots, {elapsed:.1f} ms)" if isinstance(elapsed, int | float) else ""
        return "\n".join([head, *("  " + line for line in histogram_lines(result.get("counts") or {}))])
    return f"{head}: {result.get('error', '')}"


def submit_circuit(
    client: DevCloudClient,
    path: Path,
    *,
    qpu_id: str | None,
    shots: int,
    target: str | None,
) -> tuple[str, dict[str, Any]]:
    """Submit ``path`` to the QPU; the job id and the circuit as sent."""
    qpu = pick_qpu(client, qpu_id)
    chosen = target or str(qpu.get("native_gate_set") or "cz")
    circuit = load_circuit(path, chosen)
    if circuit["target"] != qpu.get("native_gate_set"):
        raise IRError(
            f"the circuit's target is {circuit['target']!r} but QPU {qpu.get('qpu_id')} runs "
            f"{qpu.get('native_gate_set')!r}; pass --target {qpu.get('native_gate_set')}"
        )
    try:
        job_id = client.submit(str(qpu["qpu_id"]), circuit, shots)
    except CodaError as exc:
        raise CodaError(f"submit refused: {exc}") from None
    return job_id, circuit
