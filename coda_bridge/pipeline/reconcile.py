"""The bridge's pending entries checked against local progress: what the broker lost is sent again.

An entry stays pending in the cloud's consumer group until its job's
outcome is at the cloud (see :mod:`~coda_bridge.pipeline.status`).  On its
own clock the bridge walks the entries pending at its consumer and, for
each, asks the broker what it still holds:

- a message carrying it is queued, delayed, running or dead-lettered (a
  result or a job: ``replay`` sends that one): nothing to do;
- a worker holds its claim or its delivery lease: nothing to do;
- its result was delivered (the acknowledgement was lost): acknowledge it;
- its result is recorded but nothing delivers it: queue the delivery;
- none of these (the broker restarted empty, was flushed, failed over, or
  a message was dropped): forward it again.  The claim and the
  first-writer-wins record make a second ``execute`` of a finished job
  deliver the same result instead of running it again.

Every pass also resets the idle time of each entry it looked at, so a long
job is never taken for an abandoned one by another consumer of the group.
An entry it acknowledges has its record in the entry index forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis

from ..queueing.entry_index import GONE, EntryIndex
from ..queueing.messages import delivery_message
from ..replies import as_text
from .claims import ClaimBook
from .job_records import RecordStore
from .status import CloudStatus

__all__ = ["PAGE_ENTRIES", "Reconciler", "ReconcileReport"]

logger = logging.getLogger(__name__)

#: Pending entries looked at per round trip.
PAGE_ENTRIES = 200

#: Forwards stream entries (fields and id) to the broker again.
Forward = Callable[[list[tuple[dict[str, str], str]]], None]


@dataclass
class ReconcileReport:
    """What one pass found and did, entry ids by action."""

    pending: int = 0
    forwarded: list[str] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return len(self.forwarded) + len(self.redelivered) + len(self.acknowledged)


class Reconciler:
    """Walks one consumer's pending entries; ``forward`` sends entries the broker lost to it again."""

    def __init__(
        self,
        cloud: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        status: CloudStatus,
        entries: EntryIndex,
        records: RecordStore,
        claims: ClaimBook,
        enqueue_many: Callable[[list[dramatiq.Message[Any]]], Any],
        forward: Forward,
    ) -> None:
        self.cloud = cloud
        self.stream, self.group, self.consumer = stream, group, consumer
        self.status = status
        self.entries = entries
        self.records = records
        self.claims = claims
        self.enqueue_many = enqueue_many
        self.forward = forward

    def run_once(self) -> ReconcileReport:
        """One pass over every entry pending at this consumer, a page at a time."""
        report = ReconcileReport()
        start = "-"
        while True:
            page: Any = self.cloud.xpending_range(
                self.stream, self.group, min=start, max="+", count=PAGE_ENTRIES, consumername=self.consumer
            )
            ids = [str(as_text(item["message_id"])) for item in page]
            if not ids:
                break
            report.pending += len(ids)
            self._reconcile(ids, report)
            if len(ids) < PAGE_ENTRIES:
                break
            start = "(" + ids[-1]
        if report.repaired:
            logger.warning(
                "Reconciled %d pending entries: %d forwarded again, %d deliveries queued again, "
                "%d acknowledged.",
                report.pending,
                len(report.forwarded),
                len(report.redelivered),
                len(report.acknowledged),
            )
        return report

    def _reconcile(self, ids: Sequence[str], report: ReconcileReport) -> None:
        # Touch first: the entries are this consumer's, and not idle, whatever follows.
        self.cloud.xclaim(self.stream, self.group, self.consumer, 0, list(ids), justid=True)
        lost = [entry_id for entry_id, (state, _) in zip(ids, self.entries.liveness(ids), strict=True)
                if state == GONE]  # fmt: skip
        if not lost:
            return
        fields = self._fields(lost)
        gone = [entry_id for entry_id in lost if not fields.get(entry_id)]
        named = [(entry_id, fields[entry_id]) for entry_id in lost if fields.get(entry_id)]
        progress = self._local_progress([f.get("job_id", "") for _, f in named])
        forward: list[tuple[dict[str, str], str]] = []
        deliveries: list[dramatiq.Message[Any]] = []
        acks = list(gone)
        for (entry_id, entry), (busy, recorded, delivered) in zip(named, progress, strict=True):
            job_id, callback = entry.get("job_id"), entry.get("callback_url")
            if not job_id or not callback:
                logger.warning("Skipping stream entry %s: it names no job or callback.", entry_id)
                acks.append(entry_id)
            elif busy:
                continue
            elif delivered:
                acks.append(entry_id)
            elif recorded:
                deliveries.append(delivery_message(job_id, callback, entry_id))
                report.redelivered.append(entry_id)
            else:
                forward.append((entry, entry_id))
        if deliveries:
            self.enqueue_many(deliveries)
        if forward:
            self.forward(forward)
            report.forwarded += [entry_id for _, entry_id in forward]
        if acks:
            self.status.ack(acks)
            report.acknowledged += acks
            self.entries.forget(acks)  # after the acknowledgement: until then the record tells what is left

    def _fields(self, entry_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each entry's fields, read again from the stream ({} for an entry the stream no longer has)."""
        pipe = self.cloud.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
        found: dict[str, dict[str, str]] = {}
        for entry_id, reply in zip(entry_ids, pipe.execute(), strict=True):
            if reply:
                raw = reply[0][1] or {}
                found[entry_id] = {str(as_text(k)): str(as_text(v)) for k, v in raw.items()}
        return found

    def _local_progress(self, job_ids: Sequence[str]) -> list[tuple[bool, bool, bool]]:
        """For each job: claimed or its delivery leased; a result recorded; that result delivered."""
        if not job_ids:
            return []
        pipe = self.records.client.pipeline(transaction=False)
        self.claims.read_held(pipe, job_ids)
        self.records.read_progress(pipe, job_ids)
        replies = pipe.execute()
        held, progress = replies[: len(job_ids)], replies[len(job_ids) :]
        return [
            (bool(claimed) or leased, recorded, delivered)
            for claimed, (leased, recorded, delivered) in zip(
                held, self.records.progress(progress), strict=True
            )
        ]
