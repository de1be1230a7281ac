"""Key names of the node's own records in the broker Redis, under ``coda-bridge:{qpu_id}:``.

Namespaced by QPU so several QPUs at one site can share one Redis.
"""

from __future__ import annotations

__all__ = ["claim_key", "entry_key", "job_key", "tick_key"]


def claim_key(qpu_id: str, job_id: str) -> str:
    """Held (with a lease) by the one worker running a job."""
    return f"coda-bridge:{qpu_id}:claim:{job_id}"


def job_key(qpu_id: str, job_id: str) -> str:
    """The job's one recorded result and its delivery mark."""
    return f"coda-bridge:{qpu_id}:job:{job_id}"


def tick_key(qpu_id: str, name: str, slot: int) -> str:
    """Taken by the one ticker that sends tick ``slot`` of a periodic task."""
    return f"coda-bridge:{qpu_id}:tick:{name}:{slot}"


def entry_key(qpu_id: str, entry_id: str) -> str:
    """Which broker message carries a cloud stream entry now (see :mod:`~coda_bridge.broker.entries`)."""
    return f"coda-bridge:{qpu_id}:entry:{entry_id}"
