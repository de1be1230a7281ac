"""Key names in the cloud's Redis, fixed by PROTOCOL.md section 4: the job stream, status hashes, cancels."""

from __future__ import annotations

__all__ = ["cancel_key", "group_name", "status_key", "stream_key"]


def stream_key(qpu_id: str) -> str:
    """The cloud's job stream."""
    return f"qpu:{qpu_id}:jobs"


def group_name(qpu_id: str) -> str:
    """The consumer group nodes read the stream through."""
    return f"qpu:{qpu_id}:workers"


def status_key(job_id: str) -> str:
    """The cloud's status hash of one job."""
    return f"qpu:job:{job_id}:status"


def cancel_key(job_id: str) -> str:
    """Created by the cloud to cancel a job."""
    return f"qpu:job:cancelled:{job_id}"
