"""Key names of the node's own records in the broker Redis, under ``coda-bridge:{qpu_id}:``.

Namespaced by QPU so several QPUs at one site can share one Redis.  A job
id (or entry id) is data, never structure: it enters a key only through
:func:`key_part`, which percent-encodes every character but letters, digits
and ``_.-~``, so no id can reach into another id's key or another family's
(``K`` and ``K:delivering`` stay apart), and readable ids stay readable.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = [
    "claim_key",
    "delivery_lease_key",
    "device_key",
    "entry_key",
    "job_key",
    "key_part",
    "pause_key",
    "tick_key",
    "timeline_key",
    "window_key",
]


def key_part(value: str) -> str:
    """``value`` as one segment of a key: one-to-one, and never a ``:``, brace, ``*`` or control.

    Byte-exact for text the cloud's client decoded with ``surrogateescape``.
    """
    return quote(value.encode("utf-8", "surrogateescape"), safe="")


def claim_key(qpu_id: str, job_id: str) -> str:
    """Held (with a lease) by the one worker running a job."""
    return f"coda-bridge:{qpu_id}:claim:{key_part(job_id)}"


def job_key(qpu_id: str, job_id: str) -> str:
    """The job's one recorded result and its delivery mark."""
    return f"coda-bridge:{qpu_id}:job:{key_part(job_id)}"


def delivery_lease_key(qpu_id: str, job_id: str) -> str:
    """Held while one delivery of the job's result is in flight."""
    return f"{job_key(qpu_id, job_id)}:delivering"


def timeline_key(qpu_id: str, job_id: str) -> str:
    """What each step did to the job, when and where (see :mod:`~coda_bridge.pipeline.timeline`)."""
    return f"coda-bridge:{qpu_id}:timeline:{key_part(job_id)}"


def tick_key(qpu_id: str, name: str, slot: int) -> str:
    """Taken by the one ticker that sends tick ``slot`` of a periodic task."""
    return f"coda-bridge:{qpu_id}:tick:{name}:{slot}"


def entry_key(qpu_id: str, entry_id: str) -> str:
    """Which broker message carries a cloud stream entry now (see :mod:`~coda_bridge.broker.entries`)."""
    return f"coda-bridge:{qpu_id}:entry:{key_part(entry_id)}"


def pause_key(qpu_id: str) -> str:
    """The node's pause (note, start, end), expiring at its end (see :mod:`~coda_bridge.control.pause`)."""
    return f"coda-bridge:{qpu_id}:node:pause"


def device_key(qpu_id: str) -> str:
    """The device state its executor last reported, expiring unless a jobs worker keeps it fresh."""
    return f"coda-bridge:{qpu_id}:node:device"


def window_key(qpu_id: str, start: int) -> str:
    """Taken by the one jobs worker that opens the maintenance window starting at ``start`` (Unix seconds)."""
    return f"coda-bridge:{qpu_id}:node:window:{start}"
