"""The result-webhook actors: retries with exponential backoff, dead-letters what never gets through.

``deliver`` posts one result; ``deliver_batch`` the results of a batch, one
attempt each with one round trip per step for all, and each result that
needs another attempt goes on as its own ``deliver``, whose retries and
dead letter are the policy of every result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from coda_bridge.pipeline.delivery import Again
from coda_bridge.queueing.messages import delivery_message, delivery_of
from coda_bridge.queueing.queues import DEAD_LETTERED_ACTOR, DELIVER_ACTOR, DELIVER_BATCH_ACTOR, RESULTS_QUEUE

from .shared import node

logger = logging.getLogger(__name__)

#: First pause before a second delivery attempt (the retry policy, maximum backoff and time limit of an
#: attempt come from the settings at process boot: actors/actor_options.py).
MIN_BACKOFF_MS = 1000


@dramatiq.actor(actor_name=DEAD_LETTERED_ACTOR, queue_name=RESULTS_QUEUE, max_retries=0)
def dead_lettered(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    """Called once a result ran out of retries: it stays in the dead-letter queue for ``replay``."""
    job_ids, _ = delivery_of(message)  # a deliver_batch's are joined by ","
    # dated when dramatiq's retries ran out, not now: this note may run after a `replay` of the message
    ran_out_ms = (message.get("options") or {}).get("requeue_timestamp")
    at = ran_out_ms / 1000 if isinstance(ran_out_ms, int | float) else None
    for job_id in str(job_ids).split(",") if job_ids else [None]:
        node.parts.deliverer.dead_lettered(job_id, retry_info.get("retries", 0) + 1, at)


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


def _batch_again(retries: int, exc: BaseException) -> bool:
    """A broker outage or the batch's time limit: the whole batch again (what was posted is marked)."""
    return isinstance(exc, redis.RedisError | TimeLimitExceeded)


@dramatiq.actor(
    actor_name=DELIVER_BATCH_ACTOR,
    queue_name=RESULTS_QUEUE,
    min_backoff=MIN_BACKOFF_MS,
    retry_when=_batch_again,
    on_retry_exhausted=DEAD_LETTERED_ACTOR,
)
def deliver_batch(deliveries: list[list[Any]]) -> None:
    """Post the recorded results of a batch, one attempt each; each that needs another goes on alone."""
    items = [
        (str(job_id), str(callback), str(entry) if entry else None) for job_id, callback, entry in deliveries
    ]
    try:
        _, again = node.parts.deliverer.deliver_many(items)
    except (redis.RedisError, TimeLimitExceeded):
        raise
    except Exception:  # a bug here must not strand results: each goes on as its own delivery
        logger.exception("Delivering a batch of %d results failed; each goes on alone.", len(items))
        again = [Again(item, 1, 0, dramatiq.Retry()) for item in items]
    _send_again(again)


def _send_again(again: Sequence[Again]) -> None:
    """Each delivery that needs another attempt, as its own ``deliver`` message with its retry count."""
    max_backoff = int(node.settings.webhook_max_backoff_sec * 1000)
    for each in again:
        delay = each.delay_ms
        if delay is None:
            # the backoff dramatiq's Retries gives a deliver's retry after the attempt before it
            _, delay = compute_backoff(each.attempt - 2, factor=MIN_BACKOFF_MS, max_backoff=max_backoff)
        message = delivery_message(*each.item, retries=each.attempt - 1)
        deliver.broker.enqueue(message, delay=int(delay) or None)
