"""The cloud's per-job keys (PROTOCOL.md section 4): the status hash it writes, the cancel key it reads.

This module is the one writer of ``qpu:job:{job_id}:status``, and the one
place a stream entry is acknowledged (``XACK``) once its job is over: a
terminal state and the entry's acknowledgement go out in one round trip,
so the cloud's stream stays the ledger until the outcome is at the cloud.  Writes of a
batch go out in one round trip.  ``executing`` rides out a blip (the result
matters more); a terminal state must land, so its failure propagates and
the message is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from ..cloud.redis_keys import cancel_key, group_name, status_key, stream_key
from ..errors import WebhookError
from ..replies import as_text
from ..state.node_state import utc_iso

__all__ = ["ERROR_MAX_CHARS", "TERMINAL_STATES", "CloudStatus"]

logger = logging.getLogger(__name__)

#: The cloud keeps at most this much of an error text.
ERROR_MAX_CHARS = 500
#: Terminal states after which a message is acknowledged and skipped.
TERMINAL_STATES = ("completed", "cancelled")


class CloudStatus:
    """Reads and writes of the cloud's status hash and cancel key of each job, for one QPU."""

    def __init__(self, client: redis.Redis, qpu_id: str) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.stream = stream_key(qpu_id)
        self.group = group_name(qpu_id)

    def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge stream entries that need nothing more: skipped, deleted, or their result delivered."""
        entry_ids = [entry_id for entry_id in entry_ids if entry_id]
        if entry_ids:
            self.client.xack(self.stream, self.group, *entry_ids)

    def precheck(self, job_ids: Sequence[str]) -> list[tuple[str | None, bool]]:
        """The cloud's state of each job and whether its cancel key exists (one round trip)."""
        if not job_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(status_key(job_id), "state")
            pipe.exists(cancel_key(job_id))
        replies = pipe.execute()
        return [
            (as_text(state), bool(seen)) for state, seen in zip(replies[0::2], replies[1::2], strict=True)
        ]

    def cancels_seen(self, job_ids: Sequence[str]) -> set[str]:
        """The jobs among ``job_ids`` whose cancel key exists (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(cancel_key(job_id))
        return {job_id for job_id, seen in zip(job_ids, pipe.execute(), strict=True) if seen}

    def state_of(self, job_id: str) -> str | None:
        """The cloud's state of one job, ``None`` when unknown or unreadable."""
        try:
            return as_text(self.client.hget(status_key(job_id), "state"))
        except redis.RedisError:
            return None

    def write(
        self,
        updates: Sequence[tuple[str, Mapping[str, str]]],
        *,
        terminal: bool,
        acks: Sequence[str | None] = (),
    ) -> None:
        """Write the status hash of each job and acknowledge ``acks`` (one round trip).

        Only a terminal write's failure propagates.
        """
        if not updates:
            return
        pipe = self.client.pipeline(transaction=False)
        for job_id, fields in updates:
            mapping: dict[Any, Any] = dict(fields)
            pipe.hset(status_key(job_id), mapping=mapping)
        entry_ids = [entry_id for entry_id in acks if entry_id]
        if entry_ids:
            pipe.xack(self.stream, self.group, *entry_ids)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            if terminal:
                raise
            jobs = ", ".join(job_id for job_id, _ in updates)
            state = updates[0][1].get("state")
            logger.warning("Could not write status %s of job %s: %s", state, jobs, exc)

    def executing(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Mark each ``(job_id, entry_id)`` as executing on this QPU."""
        started = {"state": "executing", "started_at": utc_iso(), "qpu_id": self.qpu_id}
        self.write(
            [(job_id, {**started, "message_id": entry_id}) for job_id, entry_id in jobs], terminal=False
        )

    def cancelled(self, job_id: str, entry_id: str) -> None:
        """The job ends cancelled: its state and its entry's acknowledgement (nothing is left pending)."""
        fields = {
            "state": "cancelled",
            "cancelled_at": utc_iso(),
            "message_id": entry_id,
            "qpu_id": self.qpu_id,
        }
        self.write([(job_id, fields)], terminal=True, acks=[entry_id])

    def failed(self, job_id: str, error: str, entry_id: str | None) -> None:
        fields = {"state": "failed", "error": error[:ERROR_MAX_CHARS], "failed_at": utc_iso()}
        self.write([(job_id, fields)], terminal=True, acks=[entry_id])

    def delivered(
        self, job_id: str, payload: Mapping[str, Any], refused: str | None, entry_id: str | None
    ) -> None:
        """The terminal state after a delivery: ``completed``, or ``failed`` with the error."""
        self.delivered_many([(job_id, payload, refused, entry_id)])

    def delivered_many(
        self, results: Sequence[tuple[str, Mapping[str, Any], str | None, str | None]]
    ) -> None:
        """:meth:`delivered` for each ``(job_id, payload, refused, entry_id)``, in one round trip."""
        updates: list[tuple[str, Mapping[str, str]]] = []
        for job_id, payload, refused, _ in results:
            if payload.get("status") == "completed" and refused is None:
                updates.append((job_id, {"state": "completed", "completed_at": utc_iso()}))
            else:
                error = refused or str(payload.get("error") or "failed")
                updates.append(
                    (job_id, {"state": "failed", "error": error[:ERROR_MAX_CHARS], "failed_at": utc_iso()})
                )
        try:
            self.write(updates, terminal=True, acks=[entry_id for *_, entry_id in results])
        except redis.RedisError as exc:
            jobs = ", ".join(job_id for job_id, *_ in results)
            raise WebhookError(
                f"result of job {jobs} delivered, but its status write failed: {exc}"
            ) from None
