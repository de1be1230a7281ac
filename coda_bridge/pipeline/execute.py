"""The executor actor's work: stream entries in, one recorded result per job out.

A job is skipped when the cloud already finished or cancelled it, claimed
so no two workers run it at once, validated, run on the executor while the
actor watches the cancel key and the time limit, and its result is
recorded once (first writer wins) before it is queued for delivery.  A
rerun after a crash finds the recorded result and delivers that one, so a
job never gets two different results.  The run's observations (executor
time, durations) are written last and best effort: they never cost a run.
The entries of a batch go through each step together, one round trip per
step; a single entry is a batch of one.

The device never waits for the node: the jobs worker has a thread more
than run slots, so while one job runs the next is already claimed and
checked, queued in the executor's process (its cancel key polled, its
claim kept alive); that process starts it the moment the run before it
ends, and the results of that run are recorded and queued behind it.  A
drain or a pause withdraws the waiting job and sends it back to the queue
unstarted (:meth:`Runner.wait_turn`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..cloud.origins import callback_refusal
from ..errors import CodaError, JobError
from ..executors.host import ExecutorHost
from ..failpoints import failpoint
from ..queueing.entry_index import EntryIndex
from ..settings import Settings
from ..state.node_state import NodeState
from .checks import shown, validate_job
from .claims import Claim, ClaimBook
from .job_records import RecordStore
from .payloads import Payload, failure_payload
from .runs import GiveWay, ReadyJob, Runner
from .status import TERMINAL_STATES, CloudStatus
from .timeline import Event, Timeline, result_summary, short_reason

__all__ = [
    "Delivery",
    "Enqueue",
    "Execution",
    "JobOutcome",
    "Later",
    "execute_batch",
    "execute_job",
]

logger = logging.getLogger(__name__)

#: A job claimed elsewhere is looked at again this long after its lease could have lapsed.
LEASE_MARGIN_SEC = 0.5

#: One result to deliver: job id, callback URL, stream entry id.
Delivery = tuple[str, str, str]
#: Queues the delivery of each job's recorded result.
Enqueue = Callable[[Sequence[Delivery]], None]
#: Sends a stream entry back to be looked at again after a delay in seconds.
Later = Callable[[Mapping[str, str], str, float], None]
#: A stream entry: its fields and its id.
Entry = tuple[Mapping[str, str], str]


@dataclass(frozen=True)
class JobOutcome:
    """What happened to one stream entry (for logs, metrics and tests)."""

    job_id: str | None
    outcome: str  # queued, skipped, cancelled, later
    detail: str = ""


@dataclass(frozen=True)
class Execution:
    """What executing a job takes: the rules, the cloud's status keys, records, claims, runner and entries."""

    settings: Settings
    status: CloudStatus
    records: RecordStore
    claims: ClaimBook
    host: ExecutorHost
    runner: Runner
    state: NodeState
    entries: EntryIndex
    #: Where each job's steps are written for ``coda-bridge job`` (best effort).
    timeline: Timeline | None = None


class _Batch:
    """Stream entries taken through each step together: one round trip per step, not per job.

    Every claim it took is released by :meth:`close`, whatever happened.
    """

    def __init__(self, ex: Execution, enqueue: Enqueue, later: Later) -> None:
        self.ex, self.enqueue, self.later = ex, enqueue, later
        self.outcomes: list[JobOutcome] = []
        self.held: list[Claim] = []
        self.ready: list[ReadyJob] = []
        self.running: list[Entry] = []
        self._settled: list[tuple[Delivery, Payload | None]] = []
        self._ended_entries: list[str] = []
        self._events: list[Event] = []

    def _event(self, job_id: str | None, kind: str, **detail: Any) -> None:
        """Note a step of the job, written with the batch's next timeline write."""
        if job_id and self.ex.timeline is not None:
            self._events.append(self.ex.timeline.event(job_id, kind, **detail))

    def _run_with_events(self, pipe: redis.client.Pipeline, *, with_device: bool = False) -> None:
        """Run a step's pipeline with the events noted so far riding on it (best effort for them)."""
        events, self._events = self._events, []
        if self.ex.timeline is None:
            pipe.execute()
        else:
            self.ex.timeline.execute(pipe, events, with_device=with_device)

    def admit(self, entries: Sequence[Entry]) -> None:
        """Everything before the run: skip, cancel, claim, validate; a bad job ends here, failed."""
        named = [entry for entry in entries if self._named(*entry)]
        checks = self.ex.status.precheck([fields["job_id"] for fields, _ in named])
        fresh = [entry for entry, check in zip(named, checks, strict=True) if self._open(*entry, *check)]
        claims = [self.ex.claims.claim(fields["job_id"]) for fields, _ in fresh]
        acquired = self.ex.claims.acquire(claims)
        self.held.extend(claim for claim, (taken, _, _) in zip(claims, acquired, strict=True) if taken)
        for entry, claim, (taken, recorded, lease_left) in zip(fresh, claims, acquired, strict=True):
            self._claimed(entry, claim, taken, recorded, lease_left)
        self.outcomes += self._deliver(self._settled)
        running = {job.claim for job in self.ready}
        self.ex.claims.release([claim for claim in self.held if claim not in running])
        self.held = [job.claim for job in self.ready]

    def _named(self, fields: Mapping[str, str], entry_id: str) -> bool:
        """False (and a skip) for an entry without a job id or a callback URL: no result can go anywhere."""
        job_id, callback = fields.get("job_id"), fields.get("callback_url")
        if job_id and callback:
            return True
        missing = "job_id" if not job_id else "callback_url"
        logger.warning("Skipping stream entry %s: it has no %s.", entry_id, missing)
        self.ex.state.count("jobs_skipped")
        self.outcomes.append(JobOutcome(job_id or None, "skipped", f"no {missing}"))
        self._ended(entry_id, ack=True)
        self._event(job_id, "acknowledged", outcome="skipped", reason=f"no {missing}")
        return False

    def _open(self, fields: Mapping[str, str], entry_id: str, state: str | None, cancel_seen: bool) -> bool:
        """False when the job ends here: the cloud finished it already, or cancelled it before it started."""
        job_id = fields["job_id"]
        if state in TERMINAL_STATES:
            logger.info("Skipping job %s: already %s.", shown(job_id), state)
            self.outcomes.append(JobOutcome(job_id, "skipped", f"already {state}"))
            self._ended(entry_id, ack=True)
            self._event(job_id, "acknowledged", outcome="skipped", reason=f"already {state}")
            return False
        if cancel_seen and not self.ex.records.has_result(job_id):
            self._event(job_id, "cancel_asked", during="the wait")
            self._cancelled(job_id, entry_id)
            self.outcomes.append(JobOutcome(job_id, "cancelled", "before start"))
            return False
        return True

    def _claimed(
        self, entry: Entry, claim: Claim, taken: bool, recorded: str | None, lease_left: float
    ) -> None:
        """Sort one job by what its claim found: deliver what was recorded, look later, fail it, or run it."""
        fields, entry_id = entry
        job_id, callback = fields["job_id"], fields["callback_url"]
        delivery = (job_id, callback, entry_id)
        if recorded is not None:
            # A run before a crash recorded the result; deliver that one, never run again.
            self._settled.append((delivery, None))
            return
        if not taken:
            # Running elsewhere, or its holder died: look again once the lease could have lapsed.
            logger.info("Job %s is claimed by another worker; checking again in %.1f s.", job_id, lease_left)
            self.later(fields, entry_id, lease_left + LEASE_MARGIN_SEC)
            return
        settings = self.ex.settings
        refusal = callback_refusal(callback, settings.webapp_url, settings.allowed_callback_hosts)
        if refusal is not None:
            logger.error("Job %s failed locally: %s", shown(job_id), refusal)
            self.ex.status.failed(job_id, refusal, entry_id)
            self._ended(entry_id, ack=False)
            self.ex.state.count("jobs_failed")
            self.outcomes.append(JobOutcome(job_id, "skipped", refusal))
            self._event(job_id, "acknowledged", outcome="failed", reason=short_reason(refusal))
            return
        try:
            circuit, shots = validate_job(settings, fields)
            self.ex.host.executor()
        except JobError as exc:
            self._settled.append((delivery, failure_payload(job_id, str(exc))))
            return
        except CodaError as exc:  # the executor could not be resolved or built
            self._settled.append((delivery, failure_payload(job_id, f"Executor unavailable: {exc}")))
            return
        except Exception as exc:  # a field nobody meant to send: this job fails, its batch goes on
            logger.exception("Job %s could not be checked.", shown(job_id))
            error = f"Job could not be checked: {type(exc).__name__}: {exc}"
            self._settled.append((delivery, failure_payload(job_id, error)))
            return
        self.ready.append(ReadyJob(job_id, callback, entry_id, claim, circuit, shots))
        self.running.append(entry)

    def wait_turn(self, give_way: GiveWay, stopping: GiveWay) -> bool:
        """Wait for the device with the admitted jobs in hand; False when none of them is to run.

        Jobs cancelled meanwhile end ``cancelled`` (never started); on a
        drain or a pause every one goes back to the queue unstarted.
        """
        if not self.ready:
            return False
        cancelled, reason = self.ex.runner.wait_turn(self.ready, give_way, stopping)
        if reason is not None:
            count = len(self.ready)
            logger.info("%d job(s) prepared ahead go back to the queue unstarted: %s.", count, reason)
            for fields, entry_id in self.running:
                self.later(fields, entry_id, 0.0)
                self.outcomes.append(JobOutcome(fields["job_id"], "later", reason))
            self.ready, self.running = [], []
            return False
        if cancelled:
            for job in self.ready:
                if job.job_id in cancelled:
                    self._cancelled(job.job_id, job.entry_id)
                    self.outcomes.append(JobOutcome(job.job_id, "cancelled", "before start"))
            keep = [job.job_id not in cancelled for job in self.ready]
            self.ready = [job for job, kept in zip(self.ready, keep, strict=True) if kept]
            self.running = [entry for entry, kept in zip(self.running, keep, strict=True) if kept]
            return self.wait_turn(give_way, stopping)
        return True

    def start(self) -> None:
        """Show the admitted jobs as running, locally and at the cloud (once the device has them)."""
        host = self.ex.host
        for job in self.ready:
            self._event(
                job.job_id, "started", executor=host.origin, version=host.version, batch=len(self.ready)
            )
        pipe = self.ex.state.client.pipeline(transaction=False)
        self.ex.state.jobs_started([job.job_id for job in self.ready], self.ex.claims.lease_sec, pipe=pipe)
        self._run_with_events(pipe, with_device=True)
        self.ex.status.executing([(job.job_id, job.entry_id) for job in self.ready])

    def finish(self, payloads: Sequence[Payload | None]) -> None:
        """Record and queue the results of the run, then mark the jobs cancelled mid-run."""
        results = [
            ((job.job_id, job.callback, job.entry_id), payload)
            for job, payload in zip(self.ready, payloads, strict=True)
        ]
        for (job_id, _, _), payload in results:
            if payload is None:
                self._event(job_id, "cancel_asked", during="the run")
            self._event(job_id, "finished", outcome="cancelled" if payload is None else payload.get("status"))
        self.outcomes += self._deliver([(d, p) for d, p in results if p is not None])
        for (job_id, _, entry_id), payload in results:
            if payload is None:
                self._cancelled(job_id, entry_id)
                self.outcomes.append(JobOutcome(job_id, "cancelled", "during run"))

    def close(self) -> None:
        """Give back the claims still held, and forget the entries acknowledged here."""
        claims, self.held = self.held, []
        pipe = self.ex.claims.client.pipeline(transaction=False)
        self.ex.claims.release(claims, pipe=pipe)
        self._run_with_events(pipe)
        ended, self._ended_entries = self._ended_entries, []
        try:
            self.ex.entries.forget(ended)
        except redis.RedisError as exc:  # the records expire by themselves; nothing is pending for them
            logger.warning("Could not forget acknowledged entries %s: %s", ", ".join(ended), exc)

    def _ended(self, entry_id: str, *, ack: bool) -> None:
        """The entry's job needs nothing more: acknowledge it (unless the status write did) and forget it."""
        if ack:
            self.ex.status.ack([entry_id])
        self._ended_entries.append(entry_id)

    def _cancelled(self, job_id: str, entry_id: str) -> None:
        self.ex.status.cancelled(job_id, entry_id)
        self._ended(entry_id, ack=False)
        self._event(job_id, "acknowledged", outcome="cancelled")
        self.ex.state.count("jobs_cancelled")
        logger.info("Job %s cancelled.", job_id)

    def _deliver(self, results: Sequence[tuple[Delivery, Payload | None]]) -> list[JobOutcome]:
        """Record the new results, then queue every delivery at once; a ``None`` result was recorded earlier.

        Recording comes first, so a crash in between leaves results that a rerun delivers, never runs again.
        """
        new = [(delivery[0], payload) for delivery, payload in results if payload is not None]
        if new:
            recorded = self.ex.records.record_patiently(new)
            failpoint("jobs.after_record")
            for (job_id, _), kept in zip(new, recorded, strict=True):
                self._event(job_id, "recorded", **result_summary(kept))
        if results:
            self.enqueue([delivery for delivery, _ in results])
        return [
            JobOutcome(job_id, "queued", str(payload["status"]) if payload else "recorded earlier")
            for (job_id, _, _), payload in results
        ]


def _never() -> str | None:
    return None


def execute_batch(
    ex: Execution,
    entries: Sequence[Entry],
    enqueue: Enqueue,
    later: Later,
    running: list[Entry] | None = None,
    *,
    give_way: GiveWay = _never,
    stopping: GiveWay = _never,
) -> list[JobOutcome]:
    """Take stream entries to recorded, queued results (or skips, or cancels), one outcome per job.

    Several jobs that reach the executor run through its ``batch_run`` (one
    by one when it fails).  A job claimed elsewhere goes back through
    ``later(fields, entry_id, delay_sec)``, and so do jobs prepared ahead
    while ``give_way`` (polled while they wait) or ``stopping`` (asked
    again as the device frees up) names a reason; ``running`` collects
    the entries that reached the executor.
    """
    batch = _Batch(ex, enqueue, later)
    try:
        batch.admit(entries)
        if batch.wait_turn(give_way, stopping):
            if running is not None:
                running += batch.running
            timings: list[tuple[float, int]] = []
            batch.finish(ex.runner.run_all(batch.ready, timings, batch.start))
            ex.runner.observe(timings)  # after the results are recorded: observations never cost a run
    finally:
        ex.runner.unreserve()  # a slot reserved and not used (an error between) is given back
        batch.close()
    return batch.outcomes


def execute_job(
    ex: Execution,
    fields: Mapping[str, str],
    entry_id: str,
    enqueue: Enqueue,
    later: Later,
    *,
    give_way: GiveWay = _never,
    stopping: GiveWay = _never,
) -> JobOutcome:
    """Take one stream entry to a recorded, queued result (or a skip, a cancel, or a look later)."""
    outcomes = execute_batch(ex, [(fields, entry_id)], enqueue, later, give_way=give_way, stopping=stopping)
    return outcomes[0] if outcomes else JobOutcome(fields.get("job_id"), "later", "claimed elsewhere")
