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
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

__all__ = ["Again", "Deliverer", "DeliveryRetry", "Item", "should_retry"]

logger = logging.getLogger(__name__)

#: A delivery lease outlives one attempt (the HTTP timeout) by this much.
LEASE_MARGIN_SEC = 5.0
#: A delivery's outcome as the job's timeline names the cloud's answer.
_ANSWERED = {"delivered": "accepted", "duplicate": "already_accepted"}


#: A batch's results whose POSTs go out together (the delivery lease allows one webhook timeout per round).
POSTS_AT_ONCE = 8

#: One result to deliver: job id, callback URL, stream entry id.
Item = tuple[str, str, str | None]


@dataclass(frozen=True)
class Again:
    """A delivery that needs another attempt: ``attempt`` is that attempt's number, ``delay_ms`` its pause
    (``None``: the retry policy's backoff), ``retry`` what a single ``deliver`` raises for it."""

    item: Item
    attempt: int
    delay_ms: int | None
    retry: dramatiq.Retry


@dataclass
class _Answered:
    """A delivery the cloud answered: this time, or earlier (``duplicate``: a repeated message)."""

    item: Item
    payload: dict[str, Any]
    outcome: str
    refused: str | None
    attempted: bool = True  # False: refused here (the callback host), never sent
    post_sec: float = 0.0
    status: int | None = None
    marked: bool = False


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
        #: Each delivering thread's own POST threads (a batch never waits for another batch's POSTs).
        self._pools = threading.local()

    def deliver(self, job_id: str, callback_url: str, entry_id: str | None = None, attempt: int = 1) -> str:
        """Deliver the recorded result of ``job_id``; its status write acknowledges stream entry ``entry_id``.

        Returns ``delivered``, ``duplicate``, ``refused`` or ``missing``; raises
        the :class:`dramatiq.Retry` of an attempt that needs another.
        """
        outcomes, again = self.deliver_many([(job_id, callback_url, entry_id)], attempt)
        if again:
            raise again[0].retry
        return outcomes[0]

    def deliver_many(self, items: Sequence[Item], attempt: int = 1) -> tuple[list[str], list[Again]]:
        """One attempt at each ``(job_id, callback_url, entry_id)``: the outcome of each (``busy`` and
        ``retry`` for the ones that need another), and those to try again.

        The reads and leases, the status writes at the cloud and the bookkeeping
        after them are one round trip each for all; each POST is marked
        delivered as soon as the cloud answers it, so a crash never posts it again.
        """
        rounds = -(-len(items) // POSTS_AT_ONCE)  # the POSTs that go one after the other, at most
        lease_sec = self.settings.webhook_timeout_sec * rounds + LEASE_MARGIN_SEC
        holder = uuid.uuid4().hex  # this attempt's leases: a failed POST frees only its own
        found = self.records.read_and_lease_many([job_id for job_id, _, _ in items], lease_sec, holder)
        outcomes: list[str] = []
        again: list[Again] = []
        duplicates: list[_Answered] = []
        to_post: list[tuple[Item, dict[str, Any]]] = []
        slots: list[int] = []  # where each POST's outcome goes
        for item, (recorded, delivered, refused, busy_sec) in zip(items, found, strict=True):
            job_id = item[0]
            if recorded is None:
                logger.error("No recorded result for job %s; nothing to deliver.", job_id)
                outcomes.append("missing")
                continue
            payload = json.loads(recorded)
            if delivered:
                duplicates.append(_Answered(item, payload, "duplicate", refused, marked=True))
                outcomes.append("duplicate")
            elif busy_sec:
                logger.info(
                    "Delivery of job %s is in flight elsewhere; checking again in %.1f s.", job_id, busy_sec
                )
                delay_ms = int((busy_sec + 0.5) * 1000)
                again.append(Again(item, attempt, delay_ms, dramatiq.Retry(delay=delay_ms)))
                outcomes.append("busy")
            else:
                slots.append(len(outcomes))
                to_post.append((item, payload))
                outcomes.append("retry")  # until the POST's outcome, below
        posts = self._posts(to_post, attempt, holder)
        answered: list[_Answered] = []
        for slot, (item, _), post in zip(slots, to_post, posts, strict=True):
            if isinstance(post, _Answered):
                outcomes[slot] = post.outcome
                answered.append(post)
            else:
                again.append(Again(item, attempt + 1, None, post))
        finished = duplicates + answered
        if not finished:
            return outcomes, again
        try:
            self.status.delivered_many([(a.item[0], a.payload, a.refused, a.item[2]) for a in finished])
        except WebhookError as exc:
            # the status writes met a cloud Redis outage: the next attempts write them (and post nothing)
            jobs = ", ".join(done.item[0] for done in finished)
            retry = self._retry(jobs, attempt, exc)
            again += [Again(done.item, attempt + 1, None, DeliveryRetry(str(retry))) for done in finished]
            self._acknowledged(answered, attempt, over=False)
            return outcomes, again
        self._acknowledged(answered, attempt, over=True, duplicates=duplicates)
        return outcomes, again

    def _posts(
        self, to_post: Sequence[tuple[Item, dict[str, Any]]], attempt: int, holder: str
    ) -> list[_Answered | DeliveryRetry]:
        """POST each result (up to :data:`POSTS_AT_ONCE` at a time, on this thread's own POST threads) and
        mark each delivered as its answer comes."""
        if len(to_post) <= 1:
            return [self._post_and_mark(item, payload, attempt, holder) for item, payload in to_post]
        pool: ThreadPoolExecutor | None = getattr(self._pools, "pool", None)
        if pool is None:
            pool = self._pools.pool = ThreadPoolExecutor(POSTS_AT_ONCE, thread_name_prefix="coda-deliver")
        return list(pool.map(lambda pair: self._post_and_mark(pair[0], pair[1], attempt, holder), to_post))

    def _post_and_mark(
        self, item: Item, payload: dict[str, Any], attempt: int, holder: str
    ) -> _Answered | DeliveryRetry:
        """One POST, then the delivered mark (one round trip), so a crash or a retry never posts it again."""
        job_id, callback_url, _ = item
        settings = self.settings
        if not callback_allowed(callback_url, settings.webapp_url, settings.allowed_callback_hosts):
            why = "Result not delivered: the callback host is not the cloud's (allowed_callback_hosts)"
            logger.error("Job %s: %s.", job_id, why)
            answer = _Answered(item, payload, "refused", why, attempted=False)
        else:
            try:
                outcome, refused, post_sec, status = self._post(
                    job_id, callback_url, payload, attempt, holder
                )
            except DeliveryRetry as retry:
                return retry
            except redis.RedisError as exc:  # the failed attempt's bookkeeping met a broker outage
                return self._retry(job_id, attempt, WebhookError(f"broker Redis: {exc}"))
            failpoint("delivery.after_post")
            answer = _Answered(item, payload, outcome, refused, post_sec=post_sec, status=status)
        pipe = self.records.client.pipeline(transaction=False)
        self.records.mark_delivered(job_id, answer.refused, pipe)
        self._counted(answer, pipe)
        try:
            pipe.execute()
            answer.marked = True
        except redis.RedisError as exc:
            # The cloud has its answer: its status hash (the ledger) is what keeps the job from running
            # again, so it is written even when the broker is gone (a Ctrl-C that stopped it too).
            logger.warning(
                "Job %s: the cloud answered the delivery, but the broker Redis did not take its "
                "bookkeeping (%s); writing the job's status at the cloud all the same.",
                job_id,
                exc,
            )
        return answer

    def dead_lettered(self, job_id: str | None, attempts: int, at: float | None = None) -> None:
        """A result that ran out of delivery attempts (``at``, default now): keep its record as long as
        its dead letter (for ``replay``), note it in the job's timeline, count it and observe its attempts.
        """
        if job_id:
            waits = self.records.keep(job_id)  # False: a replay delivered it before this note ran
            if self.timeline is not None:
                dead = self.timeline.event(job_id, "dead_lettered", at=at, attempts=attempts)
                self.timeline.write([dead], keep=waits)
        self.state.count("webhook_dead_letters")
        self.histograms.observe(DELIVERY_ATTEMPTS.name, attempts, {"outcome": "dead_lettered"})
        logger.error(
            "Result of job %s dead-lettered after %s attempts; `coda-bridge replay` delivers it.",
            job_id,
            attempts,
        )

    def _execute(self, pipe: redis.client.Pipeline, events: Sequence[Event]) -> None:
        """Run a step's pipeline with its timeline events added (best effort for them)."""
        if self.timeline is None:
            pipe.execute()
        else:
            self.timeline.execute(pipe, events)

    def _event(self, job_id: str, kind: str, **detail: Any) -> list[Event]:
        if self.timeline is None:
            return []
        if detail.get("reason"):
            detail["reason"] = short_reason(detail["reason"])
        return [self.timeline.event(job_id, kind, **detail)]

    def _acknowledged(
        self,
        answered: Sequence[_Answered],
        attempt: int,
        *,
        over: bool,
        duplicates: Sequence[_Answered] = (),
    ) -> None:
        """Time this attempt's POSTs and note them in the timelines; then, when the jobs are ``over`` (their
        terminal states at the cloud, their entries acknowledged), free the delivery leases the delivered
        marks now stand for (so reconcile acknowledges at once instead of waiting out a lease) and forget
        the entries' records.

        One best-effort round trip: what it fails to drop expires by itself.
        """
        pipe = self.records.client.pipeline(transaction=False)
        events: list[Event] = []
        for done in answered:
            events += self._observed(done, attempt, pipe)
        for done in [*answered, *duplicates] if over else []:
            job_id, _, entry_id = done.item
            if done.marked:
                self.records.release_lease(job_id, pipe)
            if entry_id:
                self.entries.forget([entry_id], pipe)
            completed = done.payload.get("status") == "completed" and done.refused is None
            events += self._event(job_id, "acknowledged", outcome="completed" if completed else "failed")
        try:
            self._execute(pipe, events)
        except redis.RedisError as exc:
            jobs = ", ".join(done.item[0] for done in [*answered, *duplicates])
            logger.warning(
                "Delivery bookkeeping of job %s not written (%s); what it would drop expires by itself.",
                jobs,
                exc,
            )

    def _counted(self, done: _Answered, pipe: redis.client.Pipeline) -> None:
        """A POST's counters, on ``pipe``: they ride on its delivered mark, so no crash loses them."""
        outcome = done.outcome
        if done.attempted:
            self.state.count("webhook_attempts", pipe=pipe)
        if outcome == "delivered" and done.payload.get("status") == "completed":
            self.state.count("jobs_completed", pipe=pipe)
            self.state.set_last_job_at(pipe=pipe)
        elif outcome != "duplicate":
            self.state.count("jobs_failed", pipe=pipe)

    def _observed(self, done: _Answered, attempt: int, pipe: redis.client.Pipeline) -> list[Event]:
        """A POST's durations and timeline event, on ``pipe`` (best effort: a crash before it loses them)."""
        job_id, _, entry_id = done.item
        outcome = done.outcome
        if done.attempted:
            posted = "accepted" if outcome in ("delivered", "duplicate") else "refused"
            self.histograms.observe(WEBHOOK_DURATION.name, done.post_sec, {"outcome": posted}, pipe=pipe)
        if outcome in ("delivered", "refused"):
            self.histograms.observe(DELIVERY_ATTEMPTS.name, attempt, {"outcome": outcome}, pipe=pipe)
        if outcome == "delivered" and entry_id:
            status = str(done.payload.get("status"))
            self.histograms.observe_since_entry(XADD_TO_RESULT.name, entry_id, {"status": status}, pipe=pipe)
        return self._event(
            job_id,
            "delivery",
            attempt=attempt,
            outcome=_ANSWERED.get(outcome, "refused"),
            status=done.status,
            reason=done.refused,
            took_sec=round(done.post_sec, 3) if done.attempted else None,
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
        self, job_id: str, callback_url: str, payload: dict[str, Any], attempt: int, holder: str
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
                self.records.release_lease(job_id, pipe, holder)
                detail = {"outcome": "retry", "status": exc.status, "reason": exc, "took_sec": round(took, 3)}
                self._execute(pipe, self._event(job_id, "delivery", attempt=attempt, **detail))
                raise self._retry(job_id, attempt, exc) from exc
            if self.status.state_of(job_id) == "completed":
                logger.info("Job %s: cloud refused a repeat delivery it had already accepted.", job_id)
                return "duplicate", None, took, exc.status
            logger.error("Delivery of job %s refused by the cloud: %s", job_id, exc)
            return "refused", f"Result delivery refused: {exc}", took, exc.status
        return "delivered", None, time.monotonic() - started, answered
