"""The result payloads a job ends in: ``completed`` with its counts, or ``failed`` naming why.

Each becomes the job's one recorded result (:mod:`.job_records`), delivered to the cloud as is.
"""

from __future__ import annotations

from typing import Any

from .status import ERROR_MAX_CHARS

__all__ = [
    "Payload",
    "completed",
    "crash_failure",
    "executor_failure",
    "failure_payload",
    "time_limit_failure",
]

Payload = dict[str, Any]


def failure_payload(job_id: str, error: str) -> Payload:
    """A ``failed`` result with the error cut to the cloud's limit."""
    return {"job_id": job_id, "status": "failed", "error": error[:ERROR_MAX_CHARS]}


def completed(job_id: str, result: Any) -> Payload:
    """A ``completed`` result from the executor's (coerced) result."""
    return {
        "job_id": job_id,
        "status": "completed",
        "counts": dict(result.counts),
        "execution_time_ms": float(result.execution_time_ms),
        "shots_completed": int(result.shots_completed),
    }


def executor_failure(job_id: str, error: str) -> Payload:
    """A ``failed`` result for an error the executor raised or returned."""
    return failure_payload(job_id, f"Executor error: {error}")


def time_limit_failure(job_id: str, limit: float) -> Payload:
    """A ``failed`` result for a run abandoned past its time limit."""
    return failure_payload(
        job_id, f"Job exceeded the time limit of {limit:g} s (job_time_limit_sec); run abandoned"
    )


def crash_failure(job_id: str, died: str, attempts: int) -> Payload:
    """A ``failed`` result for a job whose executor process died on each of its runs."""
    return failure_payload(
        job_id,
        f"The executor's process died with {died} on each of {attempts} attempts "
        f"(max_executor_crashes = {attempts}); the job is not run again",
    )
