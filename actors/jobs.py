"""The executor actor: one job per message, no retries of a failed circuit (a failure is a result).

The one retry it allows is of a job claimed by another worker: the message
comes back once that claim's lease could have lapsed, so a job whose
worker died is taken over rather than dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.middleware import TimeLimitExceeded

from coda_bridge.broker import JOBS_QUEUE
from coda_bridge.errors import JobBusy
from coda_bridge.jobs import execute_batch, execute_job, failure_payload, record_result

from . import runtime, settings
from .results import deliver

logger = logging.getLogger(__name__)

#: dramatiq's own time limit is only a backstop behind the executor watch, which fails the job cleanly.
BACKSTOP_LIMIT_MS = int((settings.job_time_limit_sec * 2 + 60) * 1000)


def _queue_delivery(job_id: str, callback_url: str, entry_id: str) -> None:
    deliver.send(job_id, callback_url, entry_id)


def _only_when_claimed_elsewhere(retries: int, exc: BaseException) -> bool:
    return isinstance(exc, dramatiq.Retry)


@dramatiq.actor(
    actor_name="execute",
    queue_name=JOBS_QUEUE,
    retry_when=_only_when_claimed_elsewhere,
    time_limit=BACKSTOP_LIMIT_MS,
)
def execute(fields: dict[str, str], entry_id: str) -> None:
    """Run one stream entry's job on the executor and queue its result for delivery."""
    try:
        execute_job(runtime, fields, entry_id, _queue_delivery)
    except JobBusy as busy:
        raise dramatiq.Retry(delay=int(busy.retry_after_sec * 1000)) from None
    except TimeLimitExceeded:
        _backstop_failure(fields, entry_id)


def _run_later(fields: Mapping[str, str], entry_id: str, delay_sec: float) -> None:
    execute.send_with_options(args=(dict(fields), entry_id), delay=int(delay_sec * 1000))


@dramatiq.actor(
    actor_name="execute_batch", queue_name=JOBS_QUEUE, max_retries=0, time_limit=BACKSTOP_LIMIT_MS
)
def execute_batch_actor(entries: list[list[Any]]) -> None:
    """Run several waiting jobs through the executor's ``batch_run``, one result per job."""
    pairs = [(dict(fields), str(entry_id)) for fields, entry_id in entries]
    try:
        execute_batch(runtime, pairs, _queue_delivery, _run_later)
    except TimeLimitExceeded:
        for fields, entry_id in pairs:
            _backstop_failure(fields, entry_id)


def _backstop_failure(fields: Mapping[str, str], entry_id: str) -> None:
    """dramatiq's time limit fired: the job ends as a failed result naming the limit."""
    job_id = fields.get("job_id")
    logger.error("Job %s hit dramatiq's backstop time limit.", job_id)
    if job_id and fields.get("callback_url"):
        error = f"Job exceeded the time limit of {BACKSTOP_LIMIT_MS // 1000} s; run abandoned"
        record_result(runtime, job_id, failure_payload(job_id, error))
        _queue_delivery(job_id, fields["callback_url"], entry_id)
