"""Reading and checking what devcloud requests send: bearer, JSON bodies, query flags, admin fields.

Also the node bodies' rules of PROTOCOL.md (connect, heartbeat, result webhook), as strict as the cloud's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeGuard

from flask import request

from .cloud import JsonMap, fail
from .cloud_records import Qpu

__all__ = [
    "WEBHOOK_ERROR_MAX_CHARS",
    "admin_json",
    "bearer_token",
    "check_connect_body",
    "check_edges",
    "check_heartbeat_body",
    "check_webhook_body",
    "expect_problems",
    "is_int",
    "is_number",
    "node_json",
    "opt",
    "query_bool",
]

#: Longest ``error`` a failed result may carry.
WEBHOOK_ERROR_MAX_CHARS = 500

_BITSTRING_RE = re.compile(r"^[01]+$")


# -- request parsing --------------------------------------------------------------


def bearer_token() -> str:
    """The bearer value of the ``Authorization`` header; 401 when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise fail(401, "missing bearer token")
    return value.strip()


def node_json() -> JsonMap:
    """The JSON object body of a node request; the cloud wants ``application/json``."""
    if not request.is_json:
        raise fail(400, "Content-Type must be application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise fail(400, "request body must be a JSON object")
    return body


def admin_json() -> JsonMap:
    """The JSON object body of an admin request; an empty body is ``{}``."""
    if not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise fail(400, "request body must be a JSON object")
    return body


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def query_bool(name: str) -> bool | None:
    """A true/false query parameter; ``None`` when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise fail(400, f"query parameter {name} must be true or false")


def opt(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """An optional admin field of one type (bools are never ints)."""
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise fail(400, f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise fail(400, f"{name} has the wrong type")
    return value


# -- protocol checks -----------------------------------------------------------------


def check_edges(value: Any, num_qubits: int) -> list[list[int]] | None:
    """A connectivity edge list that fits ``num_qubits``; 400 otherwise."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise fail(400, "connectivity must be a list of [a, b] qubit pairs or null")
    edges: list[list[int]] = []
    for index, edge in enumerate(value):
        if not isinstance(edge, list) or len(edge) != 2 or not all(is_int(q) for q in edge):
            raise fail(400, f"connectivity edge {index} must be a pair of qubit indices, got {edge!r}")
        a, b = edge
        if not (0 <= a < num_qubits and 0 <= b < num_qubits):
            raise fail(
                400,
                f"connectivity edge {index} {edge!r} is outside qubits 0..{num_qubits - 1} "
                f"(num_qubits {num_qubits})",
            )
        if a == b:
            raise fail(400, f"connectivity edge {index} {edge!r} joins a qubit to itself")
        edges.append([a, b])
    return edges


def check_connect_body(body: JsonMap, qpu: Qpu) -> tuple[str, list[list[int]] | None]:
    """The fingerprint and connectivity of a connect body (PROTOCOL.md 1.1); 400 when malformed."""
    fingerprint = body.get("machine_fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint.strip():
        raise fail(400, "machine_fingerprint is required and must be a non-empty string")
    return fingerprint, check_edges(body.get("connectivity"), qpu.num_qubits)


def check_heartbeat_body(body: JsonMap, qpu: Qpu) -> list[list[int]] | None:
    """The connectivity of a heartbeat body (PROTOCOL.md 3); 400 when malformed."""
    current = body.get("current_job")
    if current is not None and not isinstance(current, str):
        raise fail(400, "current_job must be a job id string or null")
    last = body.get("last_job_at")
    if last is not None:
        if not isinstance(last, str):
            raise fail(400, "last_job_at must be an ISO-8601 time string or null")
        try:
            parsed = datetime.fromisoformat(last)
        except ValueError:
            raise fail(400, f"last_job_at {last!r} is not an ISO-8601 time") from None
        if parsed.tzinfo is None:
            raise fail(400, f"last_job_at {last!r} has no UTC offset")
    if not isinstance(body.get("redis_healthy"), bool):
        raise fail(400, "redis_healthy is required and must be true or false")
    return check_edges(body.get("connectivity"), qpu.num_qubits)


def check_webhook_body(body: JsonMap, job_id: str) -> list[str]:
    """Hard rules of PROTOCOL.md section 5 (400 when broken); returns softer problems."""
    for name, value in body.items():
        if value is None:
            raise fail(400, f"field {name!r} is null; fields that do not apply must be left out")
    if body.get("job_id") != job_id:
        raise fail(400, f"job_id {body.get('job_id')!r} does not match the callback's job {job_id!r}")
    status = body.get("status")
    problems: list[str] = []
    if status == "completed":
        counts = body.get("counts")
        if not isinstance(counts, dict):
            raise fail(400, "a completed result needs counts, a mapping of bitstring to count")
        for key, count in counts.items():
            if not _BITSTRING_RE.match(key):
                raise fail(400, f"counts key {key!r} is not a bitstring")
            if not is_int(count) or count < 0:
                raise fail(400, f"counts[{key!r}] must be a non-negative integer")
        duration = body.get("execution_time_ms")
        if not is_number(duration) or duration < 0:
            raise fail(400, "a completed result needs execution_time_ms, a non-negative number")
        shots = body.get("shots_completed")
        if not is_int(shots) or shots < 0:
            raise fail(400, "a completed result needs shots_completed, a non-negative integer")
        if len({len(k) for k in counts}) > 1:
            problems.append("counts keys differ in length")
        if sum(counts.values()) != shots:
            problems.append(f"counts sum to {sum(counts.values())}, not shots_completed {shots}")
        if "error" in body:
            problems.append("field 'error' does not apply to a completed result")
    elif status == "failed":
        error = body.get("error")
        if not isinstance(error, str) or not error:
            raise fail(400, "a failed result needs error, a non-empty string")
        if len(error) > WEBHOOK_ERROR_MAX_CHARS:
            raise fail(400, f"error is {len(error)} characters; at most {WEBHOOK_ERROR_MAX_CHARS} allowed")
        problems.extend(
            f"field {name!r} does not apply to a failed result"
            for name in ("counts", "execution_time_ms", "shots_completed")
            if name in body
        )
    else:
        raise fail(400, f"status must be 'completed' or 'failed', got {status!r}")
    known = {"job_id", "status", "counts", "execution_time_ms", "shots_completed", "error"}
    problems.extend(f"unknown field {name!r}" for name in body if name not in known)
    return problems


def expect_problems(expect: Mapping[str, Any] | None, body: Mapping[str, Any]) -> list[str]:
    """How a result differs from what the submitter said it should be."""
    if not expect:
        return []
    problems: list[str] = []
    for name in ("status", "counts", "shots_completed"):
        if name in expect and body.get(name) != expect[name]:
            problems.append(f"{name} is {body.get(name)!r}, expected {expect[name]!r}")
    needle = expect.get("error_contains")
    if needle is not None and needle not in str(body.get("error", "")):
        problems.append(f"error {body.get('error')!r} does not contain {needle!r}")
    return problems
