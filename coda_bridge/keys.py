"""Every Redis key name the node uses, in one place.

Cloud keys are fixed by PROTOCOL.md section 4; local keys live under
``coda-bridge:{qpu_id}:`` in the broker Redis so QPUs can share it.
"""

from __future__ import annotations

__all__ = [
    "cancel_key",
    "claim_key",
    "group_name",
    "job_key",
    "status_key",
    "stream_key",
    "tick_key",
]


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


def claim_key(qpu_id: str, job_id: str) -> str:
    """Held (with a lease) by the one worker running a job."""
    return f"coda-bridge:{qpu_id}:claim:{job_id}"


def job_key(qpu_id: str, job_id: str) -> str:
    """The job's one recorded result and its delivery mark."""
    return f"coda-bridge:{qpu_id}:job:{job_id}"


def tick_key(qpu_id: str, name: str, slot: int) -> str:
    """Taken by the one ticker that sends tick ``slot`` of a periodic task."""
    return f"coda-bridge:{qpu_id}:tick:{name}:{slot}"
