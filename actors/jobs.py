"""The executor actor: one job per message, no automatic retries (a failure is a result)."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import TimeLimitExceeded

from coda_bridge.broker import JOBS_QUEUE
from coda_bridge.jobs import execute_job, failure_payload

from . import runtime, settings
from .results import deliver

logger = logging.getLogger(__name__)

#: dramatiq's own time limit is only a backstop behind the executor watch, which fails the job cleanly.
BACKSTOP_LIMIT_MS = int((settings.job_time_limit_sec * 2 + 60) * 1000)


def _queue_delivery(job_id: str, callback_url: str, entry_id: str) -> None:
    deliver.send(job_id, callback_url, entry_id)


@dramatiq.actor(actor_name="execute", queue_name=JOBS_QUEUE, max_retries=0, time_limit=BACKSTOP_LIMIT_MS)
def execute(fields: dict[str, str], entry_id: str) -> None:
    """Run one stream entry's job on the executor and queue its result for delivery."""
    try:
        execute_job(runtime, fields, entry_id, _queue_delivery)
    except TimeLimitExceeded:
        job_id = fields.get("job_id")
        logger.error("Job %s hit dramatiq's backstop time limit.", job_id)
        if job_id and fields.get("callback_url"):
            from coda_bridge.jobs import _record_result

            error = f"Job exceeded the time limit of {BACKSTOP_LIMIT_MS // 1000} s; run abandoned"
            _record_result(runtime, job_id, failure_payload(job_id, error))
            _queue_delivery(job_id, fields["callback_url"], entry_id)
