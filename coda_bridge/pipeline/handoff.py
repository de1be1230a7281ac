"""A job's results handed to the webhook actor: queued at once, or tried inline first while the worker drains.

Also the one place a job stopped by dramatiq's backstop time limit becomes
a failed result (recorded, then handed off like any other).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .execute import Delivery
from .payloads import failure_payload

__all__ = ["Handoff"]

logger = logging.getLogger(__name__)


class Handoff:
    """Hands deliveries to ``enqueue``; while ``draining()``, tries each with ``deliver`` first.

    ``deliver`` (one attempt) and ``record`` (a job's result) are called only
    when needed: a jobs worker without a key never builds a deliverer.

    Under ``honcho start`` every process gets SIGTERM at once, so the results
    worker may already be gone when a drained job's result is queued.
    """

    def __init__(
        self,
        deliver: Callable[[str, str, str], object],
        record: Callable[[Sequence[tuple[str, Mapping[str, Any]]]], object],
        enqueue: Callable[[Sequence[Delivery]], object],
        draining: Callable[[], bool],
    ) -> None:
        self.deliver = deliver
        self.record = record
        self.enqueue = enqueue
        self.draining = draining

    def queue(self, deliveries: Sequence[Delivery]) -> None:
        """Queue results for the webhook actor; while draining, those delivered inline are not queued."""
        if self.draining():
            deliveries = [delivery for delivery in deliveries if not self._delivered_inline(*delivery)]
        self.enqueue(deliveries)

    def _delivered_inline(self, job_id: str, callback_url: str, entry_id: str) -> bool:
        """One delivery attempt in this process (the results worker may be stopping too); False if failed."""
        try:
            self.deliver(job_id, callback_url, entry_id)
        except Exception as exc:  # the queued delivery retries it properly
            logger.warning(
                "Inline delivery of job %s during shutdown failed (%s); queued instead.", job_id, exc
            )
            return False
        return True

    def backstop_failure(
        self, fields: Mapping[str, str], entry_id: str, limit_ms: int, job_time_limit_sec: float
    ) -> None:
        """dramatiq's time limit fired: the job ends as a failed result naming the limit."""
        job_id = fields.get("job_id")
        logger.error("Job %s hit dramatiq's backstop time limit.", job_id)
        if job_id and fields.get("callback_url"):
            error = (
                f"Job exceeded the worker's backstop time limit of {limit_ms // 1000} s "
                f"(job_time_limit_sec = {job_time_limit_sec:g} s); run abandoned"
            )
            self.record([(job_id, failure_payload(job_id, error))])
            self.queue([(job_id, fields["callback_url"], entry_id)])
