"""The executor actor's work: stream entries in, one recorded result per job out.

A job is skipped when the cloud already finished or cancelled it, claimed
so no two workers run it at once, validated, run on the executor while the
actor watches the cancel key and the time limit, and its result is
recorded once (first writer wins) before it is queued for delivery.  A
rerun after a crash finds the recorded result and delivers that one, so a
job never gets two different results.  The entries of a batch go through
each step together, one round trip per step; a single entry is a batch of one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from ..broker.keys import job_key
from ..broker.shared_state import utc_iso
from ..cloud.keys import cancel_key, status_key
from ..errors import CodaError, JobBusy, JobError
from ..failpoints import failpoint
from ..runtime import Runtime
from ..settings import Settings
from .claims import CLAIM_LEASE_SEC, Claim, acquire_claims, record_patiently, record_result, release_claims
from .runs import ERROR_MAX_CHARS, Payload, ReadyJob, batch_time_limit_sec, failure_payload, run_all

__all__ = [
    "ERROR_MAX_CHARS",
    "callback_allowed",
    "Delivery",
    "Enqueue",
    "JobOutcome",
    "batch_time_limit_sec",
    "execute_batch",
    "execute_job",
    "failure_payload",
    "parse_shots",
    "record_result",
]

logger = logging.getLogger(__name__)

#: Terminal states after which a message is acknowledged and skipped.
TERMINAL_STATES = ("completed", "cancelled")
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
    outcome: str  # queued, skipped, cancelled
    detail: str = ""


def parse_shots(raw: Any, max_shots: int) -> int:
    """``shots`` as sent (a decimal string) to an int from 1 to ``max_shots``, else :class:`JobError`."""
    text = str(raw).strip() if raw is not None else ""
    shown = text if len(text) <= 40 else text[:37] + "..."
    if not text.isdigit():
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shown!r}")
    shots = int(text)
    if not 1 <= shots <= max_shots:
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shots}")
    return shots


def callback_allowed(callback_url: str, webapp_url: str, allowed_hosts: list[str]) -> bool:
    """Results go only to the cloud's own host, unless the site allows more."""
    host = (urlsplit(callback_url).hostname or "").lower()
    if not host:
        return False
    own = (urlsplit(webapp_url).hostname or "").lower()
    return host == own or host in {h.lower() for h in allowed_hosts}


def _callback_refusal(settings: Settings, callback: str) -> str | None:
    """Why results of this job may not go to its callback URL, or ``None`` when they may."""
    if callback_allowed(callback, settings.webapp_url, settings.allowed_callback_hosts):
        return None
    host = urlsplit(callback).hostname
    return f"callback host {host!r} is not the cloud's host; allowed_callback_hosts can allow it"


def _write_status(rt: Runtime, updates: Sequence[tuple[str, Mapping[str, str]]], *, terminal: bool) -> None:
    """Write the cloud's status hash of each job (one round trip).

    ``executing`` rides out a blip (the result matters more); a terminal
    state must land, so its failure propagates and the message is retried.
    """
    if not updates:
        return
    pipe = rt.cloud_redis.pipeline(transaction=False)
    for job_id, fields in updates:
        mapping: dict[Any, Any] = dict(fields)
        pipe.hset(status_key(job_id), mapping=mapping)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        if terminal:
            raise
        jobs = ", ".join(job_id for job_id, _ in updates)
        logger.warning("Could not write status %s of job %s: %s", updates[0][1].get("state"), jobs, exc)


def _precheck(rt: Runtime, job_ids: Sequence[str]) -> list[tuple[str | None, bool]]:
    """The cloud's state of each job and whether its cancel key exists (one round trip)."""
    if not job_ids:
        return []
    pipe = rt.cloud_redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(status_key(job_id), "state")
        pipe.exists(cancel_key(job_id))
    replies = pipe.execute()
    return [(state, bool(seen)) for state, seen in zip(replies[0::2], replies[1::2], strict=True)]


def _cancelled(rt: Runtime, job_id: str, entry_id: str) -> None:
    fields = {"state": "cancelled", "cancelled_at": utc_iso(), "message_id": entry_id, "qpu_id": rt.qpu_id}
    _write_status(rt, [(job_id, fields)], terminal=True)
    rt.state.count("jobs_cancelled")
    logger.info("Job %s cancelled.", job_id)


def _validate(rt: Runtime, fields: Mapping[str, str]) -> tuple[Any, int]:
    from ..circuits.ir import parse_ir

    settings = rt.settings
    shots = parse_shots(fields.get("shots"), settings.max_shots)
    raw_ir = fields.get("ir_json")
    if raw_ir is None:
        raise JobError("message has no ir_json")
    circuit = parse_ir(raw_ir)
    if circuit.target != settings.native_gate_set:
        raise JobError(
            f"Circuit target {circuit.target!r} does not match this QPU's native gate set "
            f"{settings.native_gate_set!r}"
        )
    if circuit.num_qubits > settings.num_qubits:
        raise JobError(f"Circuit needs {circuit.num_qubits} qubits; this QPU has {settings.num_qubits}")
    return circuit, shots


def _deliver(
    rt: Runtime, enqueue: Enqueue, results: Sequence[tuple[Delivery, Payload | None]]
) -> list[JobOutcome]:
    """Record the new results, then queue every delivery at once; a ``None`` result was recorded earlier.

    Recording comes first, so a crash in between leaves results that a rerun delivers, never runs again.
    """
    new = [(delivery[0], payload) for delivery, payload in results if payload is not None]
    if new:
        record_patiently(rt, new)
        failpoint("jobs.after_record")
    if results:
        enqueue([delivery for delivery, _ in results])
    return [
        JobOutcome(job_id, "queued", str(payload["status"]) if payload else "recorded earlier")
        for (job_id, _, _), payload in results
    ]


class _Batch:
    """Stream entries taken through each step together: one round trip per step, not per job.

    Every claim it took is released by :meth:`close`, whatever happened.
    """

    def __init__(self, rt: Runtime, enqueue: Enqueue, later: Later) -> None:
        self.rt, self.enqueue, self.later = rt, enqueue, later
        self.outcomes: list[JobOutcome] = []
        self.held: list[Claim] = []
        self.ready: list[ReadyJob] = []
        self.running: list[Entry] = []
        self._settled: list[tuple[Delivery, Payload | None]] = []

    def admit(self, entries: Sequence[Entry]) -> None:
        """Everything before the run: skip, cancel, claim, validate; a bad job ends here, failed."""
        named = [entry for entry in entries if self._named(*entry)]
        checks = _precheck(self.rt, [fields["job_id"] for fields, _ in named])
        fresh = [entry for entry, check in zip(named, checks, strict=True) if self._open(*entry, *check)]
        claims = [Claim(self.rt, fields["job_id"]) for fields, _ in fresh]
        acquired = acquire_claims(self.rt, claims)
        self.held.extend(claim for claim, (taken, _, _) in zip(claims, acquired, strict=True) if taken)
        for entry, claim, (taken, recorded, lease_left) in zip(fresh, claims, acquired, strict=True):
            self._claimed(entry, claim, taken, recorded, lease_left)
        self.outcomes += _deliver(self.rt, self.enqueue, self._settled)
        running = {job.claim for job in self.ready}
        release_claims(self.rt, [claim for claim in self.held if claim not in running])
        self.held = [job.claim for job in self.ready]

    def _named(self, fields: Mapping[str, str], entry_id: str) -> bool:
        """False (and a skip) for an entry without a job id or a callback URL: no result can go anywhere."""
        job_id, callback = fields.get("job_id"), fields.get("callback_url")
        if job_id and callback:
            return True
        missing = "job_id" if not job_id else "callback_url"
        logger.warning("Skipping stream entry %s: it has no %s.", entry_id, missing)
        self.rt.state.count("jobs_skipped")
        self.outcomes.append(JobOutcome(job_id or None, "skipped", f"no {missing}"))
        return False

    def _open(self, fields: Mapping[str, str], entry_id: str, state: str | None, cancel_seen: bool) -> bool:
        """False when the job ends here: the cloud finished it already, or cancelled it before it started."""
        job_id = fields["job_id"]
        if state in TERMINAL_STATES:
            logger.info("Skipping job %s: already %s.", job_id, state)
            self.outcomes.append(JobOutcome(job_id, "skipped", f"already {state}"))
            return False
        if cancel_seen and not self.rt.local_redis.hexists(job_key(self.rt.qpu_id, job_id), "result"):
            _cancelled(self.rt, job_id, entry_id)
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
        refusal = _callback_refusal(self.rt.settings, callback)
        if refusal is not None:
            logger.error("Job %s failed locally: %s", job_id, refusal)
            failed = {"state": "failed", "error": refusal[:ERROR_MAX_CHARS], "failed_at": utc_iso()}
            _write_status(self.rt, [(job_id, failed)], terminal=True)
            self.rt.state.count("jobs_failed")
            self.outcomes.append(JobOutcome(job_id, "skipped", refusal))
            return
        try:
            circuit, shots = _validate(self.rt, fields)
            self.rt.executor()
        except JobError as exc:
            self._settled.append((delivery, failure_payload(job_id, str(exc))))
            return
        except CodaError as exc:  # the executor could not be resolved or built
            self._settled.append((delivery, failure_payload(job_id, f"Executor unavailable: {exc}")))
            return
        self.ready.append(ReadyJob(job_id, callback, entry_id, claim, circuit, shots))
        self.running.append(entry)

    def start(self) -> None:
        """Show the admitted jobs as running, locally and at the cloud."""
        self.rt.state.jobs_started([job.job_id for job in self.ready], CLAIM_LEASE_SEC)
        started = {"state": "executing", "started_at": utc_iso(), "qpu_id": self.rt.qpu_id}
        updates = [(job.job_id, {**started, "message_id": job.entry_id}) for job in self.ready]
        _write_status(self.rt, updates, terminal=False)

    def finish(self, payloads: Sequence[Payload | None]) -> None:
        """Record and queue the results of the run, then mark the jobs cancelled mid-run."""
        results = [
            ((job.job_id, job.callback, job.entry_id), payload)
            for job, payload in zip(self.ready, payloads, strict=True)
        ]
        self.outcomes += _deliver(self.rt, self.enqueue, [(d, p) for d, p in results if p is not None])
        for (job_id, _, entry_id), payload in results:
            if payload is None:
                _cancelled(self.rt, job_id, entry_id)
                self.outcomes.append(JobOutcome(job_id, "cancelled", "during run"))

    def close(self) -> None:
        """Give back the claims still held."""
        claims, self.held = self.held, []
        release_claims(self.rt, claims)


def execute_batch(
    rt: Runtime,
    entries: Sequence[Entry],
    enqueue: Enqueue,
    later: Later,
    running: list[Entry] | None = None,
) -> list[JobOutcome]:
    """Take stream entries to recorded, queued results (or skips, or cancels), one outcome per job.

    Several jobs that reach the executor run through its ``batch_run`` (one
    by one when it fails).  A job claimed elsewhere goes back through
    ``later(fields, entry_id, delay_sec)``; ``running`` collects the
    entries that reached the executor.
    """
    batch = _Batch(rt, enqueue, later)
    try:
        batch.admit(entries)
        if running is not None:
            running += batch.running
        batch.start()
        batch.finish(run_all(rt, batch.ready))
    finally:
        batch.close()
    return batch.outcomes


def execute_job(rt: Runtime, fields: Mapping[str, str], entry_id: str, enqueue: Enqueue) -> JobOutcome:
    """Take one stream entry to a recorded, queued result (or a skip, or a cancel).

    Raises :class:`JobBusy` when another worker holds the job's claim.
    """
    busy: list[float] = []
    outcomes = execute_batch(rt, [(fields, entry_id)], enqueue, lambda _f, _e, delay: busy.append(delay))
    if busy:
        raise JobBusy(fields["job_id"], busy[0])
    return outcomes[0]
