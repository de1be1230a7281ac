"""The result-webhook actor: retries with exponential backoff, dead-letters what never gets through."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from coda_bridge.queueing.messages import delivery_of
from coda_bridge.queueing.queues import DEAD_LETTERED_ACTOR, DELIVER_ACTOR, RESULTS_QUEUE

from .shared import node

#: First pause before a second delivery attempt (the retry policy, maximum backoff and time limit of an
#: attempt come from the settings at process boot: actors/actor_options.py).
MIN_BACKOFF_MS = 1000


@dramatiq.actor(actor_name=DEAD_LETTERED_ACTOR, queue_name=RESULTS_QUEUE, max_retries=0)
def dead_lettered(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    """Called once a result ran out of retries: it stays in the dead-letter queue for ``replay``."""
    job_id, _ = delivery_of(message)
    node.parts.deliverer.dead_lettered(str(job_id) if job_id else None, retry_info.get("retries", 0) + 1)


@dramatiq.actor(
    actor_name=DELIVER_ACTOR,
    queue_name=RESULTS_QUEUE,
    min_backoff=MIN_BACKOFF_MS,
    on_retry_exhausted=DEAD_LETTERED_ACTOR,
)
def deliver(job_id: str, callback_url: str, entry_id: str | None = None) -> None:
    """Post the job's recorded result to its callback URL."""
    message = CurrentMessage.get_current_message()
    attempt = int(message.options.get("retries", 0)) + 1 if message is not None else 1
    node.parts.deliverer.deliver(job_id, callback_url, entry_id, attempt)
