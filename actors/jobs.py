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

from coda_bridge.pipeline.execute import Delivery, execute_batch, execute_job
from coda_bridge.pipeline.handoff import Handoff
from coda_bridge.queueing.messages import deliveries_message, job_message
from coda_bridge.queueing.queues import EXECUTE_ACTOR, EXECUTE_BATCH_ACTOR, JOBS_QUEUE

from .actor_options import backstop_limit_ms
from .results import deliver
from .shared import node

logger = logging.getLogger(__name__)

# dramatiq's time limit of each job actor is only a backstop behind the executor watch, which fails the
# job cleanly: it comes from the settings at process boot (actors/actor_options.py).
#: Attempts of a job that keeps meeting a Redis outage (backoff grows to the maximum below).
REDIS_OUTAGE_RETRIES = 100
OUTAGE_MIN_BACKOFF_MS = 1_000
OUTAGE_MAX_BACKOFF_MS = 60_000


def _handoff() -> Handoff:
    """Results go to the webhook actor; while this worker drains, each is tried inline first (with a key)."""
    parts = node.parts
    return Handoff(
        _deliver_inline,
        _record,
        _send_deliveries,
        lambda: node.stopping.stopping.is_set() and parts.can_sign,
    )


def _deliver_inline(job_id: str, callback_url: str, entry_id: str) -> None:
    """One attempt in this process (the deliverer is built only then: it needs the key)."""
    node.parts.deliverer.deliver(job_id, callback_url, entry_id)


def _record(results: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    node.parts.records.record(results)


def _send_deliveries(deliveries: Sequence[Delivery]) -> None:
    """To the broker the webhook actors are declared on: one ``deliver`` message, or one ``deliver_batch``
    for the results of a batch (one round trip per step of their delivery, not per result)."""
    if node.settings.webhook_max_retries < 1:  # one attempt each: a batch would hand a failed one a second
        messages = [deliveries_message([delivery]) for delivery in deliveries]
    else:
        messages = [deliveries_message(deliveries)] if deliveries else []
    for message in messages:
        deliver.broker.enqueue(message)


def _queue_deliveries(deliveries: Sequence[Delivery]) -> None:
    _handoff().queue(deliveries)


def _stopping() -> str | None:
    """Why a job prepared ahead goes back to the queue: this worker drains."""
    return "the worker is stopping" if node.stopping.stopping.is_set() else None


def _give_way() -> str | None:
    """Why a job prepared ahead goes back to the queue: a drain, or a hold (pause, device not ready)."""
    reason = _stopping()
    if reason is not None:
        return reason
    try:
        return node.pauses.hold().reason
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


@dramatiq.actor(actor_name=EXECUTE_ACTOR, queue_name=JOBS_QUEUE, **_RETRIES)
def execute(fields: dict[str, str], entry_id: str) -> None:
    """Run one stream entry's job on the executor and queue its result for delivery."""
    try:
        execute_job(
            node.parts.execution,
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
    execute.broker.enqueue(job_message(fields, entry_id), delay=int(delay_sec * 1000))


@dramatiq.actor(actor_name=EXECUTE_BATCH_ACTOR, queue_name=JOBS_QUEUE, **_RETRIES)
def execute_batch_actor(entries: list[list[Any]]) -> None:
    """Run several waiting jobs through the executor's ``batch_run``, one result per job."""
    pairs = [(dict(fields), str(entry_id)) for fields, entry_id in entries]
    running: list[tuple[Mapping[str, str], str]] = []
    try:
        execute_batch(
            node.parts.execution,
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
    settings = node.settings
    _handoff().backstop_failure(fields, entry_id, backstop_limit_ms(settings), settings.job_time_limit_sec)
