"""The result-webhook actor's work: post a job's one recorded result, then write its terminal status.

A delivery posts the recorded result with a fresh JWT.  5xx and transport
errors are one WARNING line and a :class:`DeliveryRetry` (dramatiq's
``Retry``, which its worker never logs as an error), and dramatiq's Retries
middleware tries again with backoff; 4xx is final.  Once the cloud
accepted the result, the delivery is marked so a retry (or a duplicate
message) only finishes the status write and never posts again; once that
write is at the cloud, the delivery lease is freed and the entry's record
forgotten.  A result that runs out of attempts is dead-lettered
(:meth:`Deliverer.dead_lettered`): its record is kept for ``replay``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import dramatiq
import redis

from ..cloud.http_client import CloudClient
from ..cloud.origins import callback_allowed
from ..cloud.signing import Signer
from ..errors import WebhookError
from ..failpoints import failpoint
from ..metrics.histograms import DELIVERY_ATTEMPTS, WEBHOOK_DURATION, XADD_TO_RESULT, Histograms
from ..queueing.entry_index import EntryIndex
from ..settings import Settings
from ..state.node_state import NodeState
from .job_records import RecordStore
from .status import CloudStatus
from .timeline import Event, Timeline, short_reason

__all__ = ["Deliverer", "DeliveryRetry", "should_retry"]

logger = logging.getLogger(__name__)

#: A delivery lease outlives one attempt (the HTTP timeout) by this much.
LEASE_MARGIN_SEC = 5.0
#: A delivery's outcome as the job's timeline names the cloud's answer.
_ANSWERED = {"delivered": "accepted", "duplicate": "already_accepted"}


class DeliveryRetry(dramatiq.Retry):
    """An attempt failed in a way a later one may not (5xx, transport, the status write).

    Logged as one WARNING line where it happens; it counts against the delivery retries.
    """


def should_retry(max_retries: int) -> Any:
    """dramatiq ``retry_when``: transport errors, 5xx and Redis outages, up to ``max_retries``; never 4xx."""

    def retry_when(retries: int, exc: BaseException) -> bool:
        if isinstance(exc, DeliveryRetry):
            return retries < max_retries
        if isinstance(exc, dramatiq.Retry):  # another delivery of the job is in flight: always look again
            return True
        retryable = isinstance(exc, redis.RedisError) or (isinstance(exc, WebhookError) and exc.retryable)
        return retryable and retries < max_retries

    return retry_when


class Deliverer:
    """Posts recorded results to the cloud, one POST of a job in flight at a time."""

    def __init__(
        self,
        settings: Settings,
        records: RecordStore,
        status: CloudStatus,
        *,
        cloud: CloudClient,
        signer: Signer,
        state: NodeState,
        entries: EntryIndex,
        timeline: Timeline | None = None,
    ) -> None:
        self.settings = settings
        self.records = records
        self.status = status
        self.cloud = cloud
        self.signer = signer
        self.state = state
        self.entries = entries
        self.timeline = timeline
        self.histograms = Histograms(state.client, state.qpu_id)

    def deliver(self, job_id: str, callback_url: str, entry_id: str | None = None, attempt: int = 1) -> str:
        """Deliver the recorded result of ``job_id``; its status write acknowledges stream entry ``entry_id``.

        Returns ``delivered``, ``duplicate``, ``refused`` or ``missing``.
        """
        lease_sec = self.settings.webhook_timeout_sec + LEASE_MARGIN_SEC
        recorded, delivered, refused, busy_sec = self.records.read_and_lease(job_id, lease_sec)
        if recorded is None:
            logger.error("No recorded result for job %s; nothing to deliver.", job_id)
            return "missing"
        payload = json.loads(recorded)
        if delivered:
            self.status.delivered(job_id, payload, refused, entry_id)
            self._acknowledged(job_id, payload, refused, entry_id, release=True)
            return "duplicate"
        if busy_sec:
            logger.info(
                "Delivery of job %s is in flight elsewhere; checking again in %.1f s.", job_id, busy_sec
            )
            raise dramatiq.Retry(delay=int((busy_sec + 0.5) * 1000))
        settings = self.settings
        attempted = callback_allowed(callback_url, settings.webapp_url, settings.allowed_callback_hosts)
        post_sec = 0.0
        answered: int | None = None
        if attempted:
            outcome, refused, post_sec, answered = self._post(job_id, callback_url, payload, attempt)
            failpoint("delivery.after_post")
        else:
            outcome = "refused"
            refused = "Result not delivered: the callback host is not the cloud's (allowed_callback_hosts)"
            logger.error("Job %s: %s.", job_id, refused)
        pipe = self.records.client.pipeline(transaction=False)
        self.records.mark_delivered(job_id, refused, pipe)
        if attempted:
            self.state.count("webhook_attempts", pipe=pipe)
            posted = "accepted" if outcome in ("delivered", "duplicate") else "refused"
            self.histograms.observe(WEBHOOK_DURATION.name, post_sec, {"outcome": posted}, pipe=pipe)
        if outcome in ("delivered", "refused"):
            self.histograms.observe(DELIVERY_ATTEMPTS.name, attempt, {"outcome": outcome}, pipe=pipe)
        if outcome == "delivered" and entry_id:
            status = str(payload.get("status"))
            self.histograms.observe_since_entry(XADD_TO_RESULT.name, entry_id, {"status": status}, pipe=pipe)
        if outcome == "delivered" and payload.get("status") == "completed":
            self.state.count("jobs_completed", pipe=pipe)
            self.state.set_last_job_at(pipe=pipe)
        elif outcome != "duplicate":
            self.state.count("jobs_failed", pipe=pipe)
        marked = False
        try:
            self._execute(
                pipe,
                job_id,
                attempt,
                outcome=_ANSWERED.get(outcome, "refused"),
                status=answered,
                reason=refused,
                took_sec=round(post_sec, 3) if attempted else None,
            )
            marked = True
        except redis.RedisError as exc:
            # The cloud has its answer: its status hash (the ledger) is what keeps the job from running
            # again, so it is written even when the broker is gone (a Ctrl-C that stopped it too).
            logger.warning(
                "Job %s: the cloud answered the delivery, but the broker Redis did not take its "
                "bookkeeping (%s); writing the job's status at the cloud all the same.",
                job_id,
                exc,
            )
        try:
            self.status.delivered(job_id, payload, refused, entry_id)
        except WebhookError as exc:  # the status write met a cloud Redis outage; the next attempt writes it
            raise self._retry(job_id, attempt, exc) from exc
        self._acknowledged(job_id, payload, refused, entry_id, release=marked)
        return outcome

    def dead_lettered(self, job_id: str | None, attempts: int) -> None:
        """A result that ran out of delivery attempts: keep its record as long as its dead letter (for
        ``replay``), note it in the job's timeline, count it and observe its attempts.
        """
        if job_id:
            self.records.keep(job_id)
            if self.timeline is not None:
                dead = self.timeline.event(job_id, "dead_lettered", attempts=attempts)
                self.timeline.write([dead], keep=True)
        self.state.count("webhook_dead_letters")
        self.histograms.observe(DELIVERY_ATTEMPTS.name, attempts, {"outcome": "dead_lettered"})
        logger.error(
            "Result of job %s dead-lettered after %s attempts; `coda-bridge replay` delivers it.",
            job_id,
            attempts,
        )

    def _execute(self, pipe: redis.client.Pipeline, job_id: str, attempt: int, **detail: Any) -> None:
        """Run the step's pipeline with the delivery attempt added to the job's timeline (best effort)."""
        if self.timeline is None:
            pipe.execute()
            return
        if detail.get("reason"):
            detail["reason"] = short_reason(detail["reason"])
        self.timeline.execute(pipe, [self.timeline.event(job_id, "delivery", attempt=attempt, **detail)])

    def _acknowledged(
        self,
        job_id: str,
        payload: dict[str, Any],
        refused: str | None,
        entry_id: str | None,
        *,
        release: bool,
    ) -> None:
        """The job's terminal state is at the cloud and its entry acknowledged: forget the entry's record,
        free the delivery lease (``release``: the delivered mark stands for it now, so reconcile
        acknowledges at once instead of waiting out the lease) and note it in the timeline.

        One best-effort round trip: what it fails to drop expires by itself.
        """
        pipe = self.records.client.pipeline(transaction=False)
        if release:
            self.records.release_lease(job_id, pipe)
        if entry_id:
            self.entries.forget([entry_id], pipe)
        try:
            if self.timeline is None:
                pipe.execute()
                return
            state = "completed" if payload.get("status") == "completed" and refused is None else "failed"
            events: list[Event] = [self.timeline.event(job_id, "acknowledged", outcome=state)]
            self.timeline.execute(pipe, events)
        except redis.RedisError as exc:
            logger.warning(
                "Job %s is over at the cloud, but the broker Redis did not drop its delivery lease and "
                "entry record (%s); they expire by themselves.",
                job_id,
                exc,
            )

    def _retry(self, job_id: str, attempt: int, exc: WebhookError) -> DeliveryRetry:
        """One WARNING line for a failed attempt (no traceback: the condition is expected), and the retry."""
        attempts = self.settings.webhook_max_retries + 1
        then = "retrying with backoff" if attempt < attempts else "the last one: dead-lettered for `replay`"
        logger.warning(
            "Delivery of job %s failed (attempt %d of %d, %s): %s", job_id, attempt, attempts, then, exc
        )
        return DeliveryRetry(str(exc))

    def _post(
        self, job_id: str, callback_url: str, payload: dict[str, Any], attempt: int
    ) -> tuple[str, str | None, float, int | None]:
        """POST the result; returns the outcome, why the cloud refused it (if it did), the seconds it took
        and the HTTP status the cloud answered.

        A retryable failure is counted, frees the lease and raises :class:`DeliveryRetry`.
        """
        started = time.monotonic()
        try:
            answered = self.cloud.deliver(callback_url, self.signer, payload)
        except WebhookError as exc:
            took = time.monotonic() - started
            if exc.retryable:
                pipe = self.records.client.pipeline(transaction=False)
                self.state.count("webhook_attempts", pipe=pipe)
                self.state.count("webhook_failures", pipe=pipe)
                self.histograms.observe(WEBHOOK_DURATION.name, took, {"outcome": "retryable"}, pipe=pipe)
                self.records.release_lease(job_id, pipe)
                self._execute(
                    pipe,
                    job_id,
                    attempt,
                    outcome="retry",
                    status=exc.status,
                    reason=exc,
                    took_sec=round(took, 3),
                )
                raise self._retry(job_id, attempt, exc) from exc
            if self.status.state_of(job_id) == "completed":
                logger.info("Job %s: cloud refused a repeat delivery it had already accepted.", job_id)
                return "duplicate", None, took, exc.status
            logger.error("Delivery of job %s refused by the cloud: %s", job_id, exc)
            return "refused", f"Result delivery refused: {exc}", took, exc.status
        return "delivered", None, time.monotonic() - started, answered
