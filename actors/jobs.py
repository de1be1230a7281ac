"""The executor actor: one job per message, no retries of a failed circuit (a failure is a result).

Two things do come back: a job claimed by another worker (sent again once
that claim's lease could have lapsed, so a job whose worker died is taken
over rather than dropped), and a job that met a Redis outage before its
result was recorded (dramatiq's retries with backoff; the claim and the
recorded result keep it from ever running twice).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import TimeLimitExceeded

from coda_bridge.broker.queues import EXECUTE_ACTOR, EXECUTE_BATCH_ACTOR, JOBS_QUEUE
from coda_bridge.pipeline.execute import Delivery, execute_batch, execute_job
from coda_bridge.pipeline.runs import batch_time_limit_sec, failure_payload

from .node import broker, parts, pauses, settings, stopping
from .results import deliver

logger = logging.getLogger(__name__)

#: dramatiq's own time limit is only a backstop behind the executor watch, which fails the job cleanly:
#: it allows every run a job may get (one per executor crash), each with its stop grace, plus a minute;
#: twice over, as a job prepared ahead first waits for the runs of the job before it.
_RUN_SEC = settings.job_time_limit_sec + settings.executor_stop_grace_sec
_AHEAD = 2
BACKSTOP_LIMIT_MS = int((_RUN_SEC * settings.max_executor_crashes * _AHEAD + 60) * 1000)
#: A batch may run past the sum of its jobs' limits, then each job alone (after the batch before it).
BATCH_BACKSTOP_LIMIT_MS = int(
    (
        (
            batch_time_limit_sec(settings.job_time_limit_sec, settings.batch_size)
            + settings.executor_stop_grace_sec
            + _RUN_SEC * settings.max_executor_crashes * settings.batch_size
        )
        * _AHEAD
        + 60
    )
    * 1000
)
#: Attempts of a job that keeps meeting a Redis outage (backoff grows to the maximum below).
REDIS_OUTAGE_RETRIES = 100
OUTAGE_MIN_BACKOFF_MS = 1_000
OUTAGE_MAX_BACKOFF_MS = 60_000


def _queue_deliveries(deliveries: Sequence[Delivery]) -> None:
    """Queue results for the webhook actor at once; while this worker drains, try each inline first."""
    if stopping.stopping.is_set() and parts.can_sign:  # without the key, the results worker delivers
        deliveries = [delivery for delivery in deliveries if not _delivered_inline(*delivery)]
    broker.enqueue_many([deliver.message(*delivery) for delivery in deliveries])


def _delivered_inline(job_id: str, callback_url: str, entry_id: str) -> bool:
    """One delivery attempt in this process (the results worker may be stopping too); False if it failed."""
    try:
        parts.deliverer.deliver(job_id, callback_url, entry_id)
    except Exception as exc:  # the queued delivery retries it properly
        logger.warning("Inline delivery of job %s during shutdown failed (%s); queued instead.", job_id, exc)
        return False
    return True


def _stopping() -> str | None:
    """Why a job prepared ahead goes back to the queue: this worker drains."""
    return "the worker is stopping" if stopping.stopping.is_set() else None


def _give_way() -> str | None:
    """Why a job prepared ahead goes back to the queue: a drain, or a hold (pause, device not ready)."""
    reason = _stopping()
    if reason is not None:
        return reason
    try:
        return pauses.hold().reason
    except redis.RedisError:  # the claim and the cancel poll meet the outage too; the job waits on
        return None


def _retry_when(retries: int, exc: BaseException) -> bool:
    """A Redis outage: retry with backoff; anything else: never (a failed circuit is a result)."""
    return isinstance(exc, redis.RedisError) and retries < REDIS_OUTAGE_RETRIES


#: The retry policy both job actors share.
_RETRIES: dict[str, Any] = {
    "retry_when": _retry_when,
    "min_backoff": OUTAGE_MIN_BACKOFF_MS,
    "max_backoff": OUTAGE_MAX_BACKOFF_MS,
}


@dramatiq.actor(actor_name=EXECUTE_ACTOR, queue_name=JOBS_QUEUE, time_limit=BACKSTOP_LIMIT_MS, **_RETRIES)
def execute(fields: dict[str, str], entry_id: str) -> None:
    """Run one stream entry's job on the executor and queue its result for delivery."""
    try:
        execute_job(
            parts.execution,
            fields,
            entry_id,
            _queue_deliveries,
            _run_later,
            give_way=_give_way,
            stopping=_stopping,
        )
    except TimeLimitExceeded:
        _backstop_failure(fields, entry_id)


def _run_later(fields: Mapping[str, str], entry_id: str, delay_sec: float) -> None:
    execute.send_with_options(args=(dict(fields), entry_id), delay=int(delay_sec * 1000))


@dramatiq.actor(
    actor_name=EXECUTE_BATCH_ACTOR, queue_name=JOBS_QUEUE, time_limit=BATCH_BACKSTOP_LIMIT_MS, **_RETRIES
)
def execute_batch_actor(entries: list[list[Any]]) -> None:
    """Run several waiting jobs through the executor's ``batch_run``, one result per job."""
    pairs = [(dict(fields), str(entry_id)) for fields, entry_id in entries]
    running: list[tuple[Mapping[str, str], str]] = []
    try:
        execute_batch(
            parts.execution,
            pairs,
            _queue_deliveries,
            _run_later,
            running,
            give_way=_give_way,
            stopping=_stopping,
        )
    except TimeLimitExceeded:
        for fields, entry_id in running:
            _backstop_failure(fields, entry_id)


def _backstop_failure(fields: Mapping[str, str], entry_id: str) -> None:
    """dramatiq's time limit fired: the job ends as a failed result naming the limit."""
    job_id = fields.get("job_id")
    logger.error("Job %s hit dramatiq's backstop time limit.", job_id)
    if job_id and fields.get("callback_url"):
        error = (
            f"Job exceeded the worker's backstop time limit of {BACKSTOP_LIMIT_MS // 1000} s "
            f"(job_time_limit_sec = {settings.job_time_limit_sec:g} s); run abandoned"
        )
        parts.records.record([(job_id, failure_payload(job_id, error))])
        _queue_deliveries([(job_id, fields["callback_url"], entry_id)])
