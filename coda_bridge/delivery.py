"""The result-webhook actor's work, and the dead-letter queue behind ``replay``.

A delivery posts the job's one recorded result with a fresh JWT.  5xx and
transport errors raise a retryable :class:`WebhookError`, and dramatiq's
Retries middleware tries again with backoff; 4xx is final.  Once the cloud
accepted the result, the delivery is marked so a retry (or a duplicate
message) only finishes the status write and never posts again.  A result
that exhausts its retries is kept in dramatiq's dead-letter queue.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.message import Message

from .broker import RESULTS_QUEUE, CodaBroker
from .errors import WebhookError
from .failpoints import failpoint
from .jobs import ERROR_MAX_CHARS
from .keys import job_key, status_key
from .nodestate import utc_iso
from .runtime import Runtime

__all__ = ["DeadLetter", "dead_letters", "deliver_result", "replay_dead_letters", "should_retry"]

logger = logging.getLogger(__name__)

#: How long a delivered mark is kept to absorb duplicate messages.
DELIVERED_TTL_SEC = 7 * 86_400


def should_retry(max_retries: int) -> Any:
    """dramatiq ``retry_when``: retry transport errors and 5xx, up to ``max_retries``; never 4xx."""

    def retry_when(retries: int, exc: BaseException) -> bool:
        return isinstance(exc, WebhookError) and exc.retryable and retries < max_retries

    return retry_when


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _write_terminal_status(rt: Runtime, job_id: str, payload: dict[str, Any], refused: str | None) -> None:
    if payload.get("status") == "completed" and refused is None:
        fields = {"state": "completed", "completed_at": utc_iso()}
    else:
        error = refused or str(payload.get("error") or "failed")
        fields = {"state": "failed", "error": error[:ERROR_MAX_CHARS], "failed_at": utc_iso()}
    mapping: dict[Any, Any] = fields
    try:
        rt.cloud_redis.hset(status_key(job_id), mapping=mapping)
    except redis.RedisError as exc:
        raise WebhookError(f"result of job {job_id} delivered, but its status write failed: {exc}") from None


def deliver_result(rt: Runtime, job_id: str, callback_url: str) -> str:
    """Deliver the recorded result of ``job_id``.

    Returns ``delivered``, ``duplicate``, ``refused`` or ``missing``.
    """
    key = job_key(rt.qpu_id, job_id)
    recorded, delivered, refused = (
        _text(v) for v in rt.local_redis.hmget(key, "result", "delivered", "refused")
    )
    if recorded is None:
        logger.error("No recorded result for job %s; nothing to deliver.", job_id)
        return "missing"
    payload = json.loads(recorded)
    outcome = "duplicate" if delivered else "delivered"
    if not delivered:
        rt.state.count("webhook_attempts")
        try:
            rt.cloud.deliver(callback_url, rt.signer, payload)
        except WebhookError as exc:
            if exc.retryable:
                rt.state.count("webhook_failures")
                logger.warning("Delivery of job %s failed, will retry: %s", job_id, exc)
                raise
            refused = f"Result delivery refused: {exc}"
            logger.error("Delivery of job %s refused by the cloud: %s", job_id, exc)
            outcome = "refused"
        failpoint("delivery.after_post")
        pipe = rt.local_redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"delivered": repr(time.time()), **({"refused": refused} if refused else {})})
        pipe.expire(key, DELIVERED_TTL_SEC)
        pipe.execute()
    _write_terminal_status(rt, job_id, payload, refused)
    if outcome == "delivered":
        if payload.get("status") == "completed":
            rt.state.count("jobs_completed")
            rt.state.set_last_job_at()
        else:
            rt.state.count("jobs_failed")
    elif outcome == "refused":
        rt.state.count("jobs_failed")
    return outcome


@dataclass(frozen=True)
class DeadLetter:
    """A result message that exhausted its retries."""

    message_id: str
    redis_message_id: str
    job_id: str
    callback_url: str
    retries: int
    dead_since: float


def _xq(broker: CodaBroker) -> tuple[str, str]:
    base = f"{broker.namespace}:{RESULTS_QUEUE}.XQ"
    return base, f"{base}.msgs"


def dead_letters(broker: CodaBroker) -> list[DeadLetter]:
    """Every dead-lettered result, oldest first."""
    zset, msgs = _xq(broker)
    client = broker.client
    found = []
    entries: list[Any] = client.zrange(zset, 0, -1, withscores=True)
    for raw_id, score in entries:
        redis_id = _text(raw_id) or ""
        data: Any = client.hget(msgs, redis_id)
        if data is None:
            continue
        message = Message.decode(data)
        job_id, callback = [*message.args, None, None][:2]
        found.append(
            DeadLetter(
                message_id=message.message_id,
                redis_message_id=redis_id,
                job_id=str(job_id),
                callback_url=str(callback),
                retries=int(message.options.get("retries", 0)),
                dead_since=float(score) / 1000,
            )
        )
    return found


def replay_dead_letters(broker: CodaBroker, job_ids: set[str] | None = None) -> list[DeadLetter]:
    """Queue dead-lettered results for delivery again (all, or those of ``job_ids``); return them."""
    zset, msgs = _xq(broker)
    replayed = []
    for letter in dead_letters(broker):
        if job_ids is not None and letter.job_id not in job_ids:
            continue
        data: Any = broker.client.hget(msgs, letter.redis_message_id)
        if data is None:
            continue
        message = Message.decode(data)
        options = {
            k: v for k, v in message.options.items() if k not in ("retries", "traceback", "redis_message_id")
        }
        fresh: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=RESULTS_QUEUE,
            actor_name=message.actor_name,
            args=message.args,
            kwargs=message.kwargs,
            options=options,
        )
        broker.enqueue(fresh)
        pipe = broker.client.pipeline(transaction=False)
        pipe.zrem(zset, letter.redis_message_id)
        pipe.hdel(msgs, letter.redis_message_id)
        pipe.execute()
        replayed.append(letter)
    return replayed
