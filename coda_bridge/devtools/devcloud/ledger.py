"""The job ledger: the jobs the simulator submitted, their stream ids, and the results delivered for them.

:class:`JobLedger` is part of :class:`~.store.Store`, which holds the state and the lock.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .cloud_records import Job

__all__ = ["JobLedger"]


class JobLedger:
    """The store's job methods; the store provides ``lock``, ``jobs``, ``seq`` and ``changes``."""

    lock: threading.RLock
    jobs: dict[str, Job]
    seq: Iterator[int]
    changes: int

    def add_jobs(self, jobs: Iterable[Job]) -> set[str]:
        """Record jobs about to be submitted; returns the ids that were new.

        Jobs are recorded before their XADD, so a result can never arrive
        for a job the simulator does not know yet.  A job id submitted again
        keeps its first record.
        """
        with self.lock:
            new: set[str] = set()
            for job in jobs:
                if job.job_id not in self.jobs:
                    self.jobs[job.job_id] = job
                    new.add(job.job_id)
            self.changes += 1
            return new

    def set_submitted(self, job_ids: Iterable[str], at: float) -> None:
        """Stamp the XADD time on jobs that have none yet."""
        with self.lock:
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is not None and job.submitted_at is None:
                    job.submitted_at = at

    def add_stream_ids(self, stream_ids: Mapping[str, str]) -> None:
        """Note the stream entry id each job got."""
        with self.lock:
            for job_id, stream_id in stream_ids.items():
                job = self.jobs.get(job_id)
                if job is not None:
                    job.stream_ids.append(stream_id)
            self.changes += 1

    def forget_jobs(self, job_ids: Iterable[str]) -> None:
        """Drop job records whose XADD failed (unless a result came meanwhile)."""
        with self.lock:
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is not None and not job.deliveries:
                    del self.jobs[job_id]

    def get_job(self, job_id: str, *, deep: bool = True) -> Job | None:
        """A snapshot of one job, or ``None``; a shallow one (for reading its settings) unless ``deep``."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            return copy.deepcopy(job) if deep else copy.copy(job)

    def job_views(
        self, qpu_id: str | None = None, *, full: bool = False, deliveries: bool = True
    ) -> list[dict[str, Any]]:
        """JSON views of the jobs (of one QPU), in submission order."""
        with self.lock:
            return [
                j.view(full=full, deliveries=deliveries)
                for j in self.jobs.values()
                if qpu_id in (None, j.qpu_id)
            ]

    def results(self, qpu_id: str | None = None) -> dict[str, dict[str, Any] | None]:
        """Job id to its first accepted result body, ``None`` while none arrived."""
        with self.lock:
            return {j.job_id: j.result for j in self.jobs.values() if qpu_id in (None, j.qpu_id)}

    def mark_cancel_requested(self, job_id: str) -> None:
        """Note that the cancel key was set for a job."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and job.cancel_requested_at is None:
                job.cancel_requested_at = time.time()
                self.changes += 1

    def deliver(self, job: Job, delivery: dict[str, Any]) -> dict[str, Any]:
        """Record an accepted result; flags duplicates whose content differs from the first.

        ``job`` is registered first when the simulator did not submit it.
        """
        with self.lock:
            known = self.jobs.setdefault(job.job_id, job)
            delivery = dict(delivery, seq=next(self.seq), duplicate=bool(known.deliveries))
            delivery["content_mismatch"] = False
            if known.deliveries:
                first = known.deliveries[0]["body"]
                body = delivery["body"]
                if (first.get("status"), first.get("counts")) != (body.get("status"), body.get("counts")):
                    delivery["content_mismatch"] = True
                    known.content_mismatch = True
            known.deliveries.append(delivery)
            self.changes += 1
            return copy.deepcopy(delivery)
