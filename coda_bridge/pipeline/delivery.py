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

from ..broker.keys import job_key
from ..broker.redis_broker import RESULTS_QUEUE, CodaBroker
from ..broker.shared_state import utc_iso
from ..cloud.keys import status_key
from ..errors import WebhookError
from ..failpoints import failpoint
from ..runtime import Runtime
from .execute import ERROR_MAX_CHARS, callback_allowed

__all__ = [
    "DeadLetter",
    "dead_letters",
    "deliver_result",
    "keep_for_replay",
    "replay_dead_letters",
    "should_retry",
]

logger = logging.getLogger(__name__)

#: How long a delivered mark is kept to absorb duplicate messages.
DELIVERED_TTL_SEC = 7 * 86_400


def should_retry(max_retries: int) -> Any:
    """dramatiq ``retry_when``: transport errors, 5xx and Redis outages, up to ``max_retries``; never 4xx."""

    def retry_when(retries: int, exc: BaseException) -> bool:
        if isinstance(exc, dramatiq.Retry):  # another delivery of the job is in flight: always look again
            return True
        retryable = isinstance(exc, redis.RedisError) or (isinstance(exc, WebhookError) and exc.retryable)
        return retryable and retries < max_retries

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


#: Read a job's record and, unless it was delivered, take the delivery lease: one atomic round trip.
_READ_AND_LEASE = """
local rec = redis.call('HMGET', KEYS[1], 'result', 'delivered', 'refused')
local left = 0
if rec[1] and not rec[2] and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  left = math.max(redis.call('PTTL', KEYS[2]), 1)
end
return {rec[1], rec[2], rec[3], left}
"""


def _read_and_lease(rt: Runtime, key: str) -> tuple[str | None, str | None, str | None, float]:
    """The record's result, delivered mark and refusal; then 0 if the lease is ours, else its seconds left.

    The lease keeps one POST of a job in flight at a time, across every
    delivery thread and process.
    """
    lease_ms = int((rt.settings.webhook_timeout_sec + 5) * 1000)
    recorded, delivered, refused, left_ms = rt.local_redis.eval(
        _READ_AND_LEASE, 2, key, f"{key}:delivering", lease_ms
    )
    return _text(recorded), _text(delivered), _text(refused), int(left_ms) / 1000


def _cloud_state(rt: Runtime, job_id: str) -> str | None:
    try:
        state = rt.cloud_redis.hget(status_key(job_id), "state")
    except redis.RedisError:
        return None
    return _text(state)


def keep_for_replay(rt: Runtime, job_id: str) -> None:
    """A dead-lettered result stays as long as its dead letter: drop the record's expiry."""
    rt.local_redis.persist(job_key(rt.qpu_id, job_id))


def _post(
    rt: Runtime, key: str, job_id: str, callback_url: str, payload: dict[str, Any]
) -> tuple[str, str | None]:
    """POST the result; returns the outcome and, when the cloud refused it, why.

    A retryable failure is counted, frees the lease and propagates.
    """
    try:
        rt.cloud.deliver(callback_url, rt.signer, payload)
    except WebhookError as exc:
        if exc.retryable:
            logger.warning("Delivery of job %s failed, will retry: %s", job_id, exc)
            pipe = rt.local_redis.pipeline(transaction=False)
            rt.state.count("webhook_attempts", pipe=pipe)
            rt.state.count("webhook_failures", pipe=pipe)
            pipe.delete(f"{key}:delivering")
            pipe.execute()
            raise
        if _cloud_state(rt, job_id) == "completed":
            logger.info("Job %s: cloud refused a repeat delivery it had already accepted.", job_id)
            return "duplicate", None
        logger.error("Delivery of job %s refused by the cloud: %s", job_id, exc)
        return "refused", f"Result delivery refused: {exc}"
    return "delivered", None


def deliver_result(rt: Runtime, job_id: str, callback_url: str) -> str:
    """Deliver the recorded result of ``job_id``.

    Returns ``delivered``, ``duplicate``, ``refused`` or ``missing``.
    """
    key = job_key(rt.qpu_id, job_id)
    recorded, delivered, refused, busy_sec = _read_and_lease(rt, key)
    if recorded is None:
        logger.error("No recorded result for job %s; nothing to deliver.", job_id)
        return "missing"
    payload = json.loads(recorded)
    if delivered:
        _write_terminal_status(rt, job_id, payload, refused)
        return "duplicate"
    if busy_sec:
        logger.info("Delivery of job %s is in flight elsewhere; checking again in %.1f s.", job_id, busy_sec)
        raise dramatiq.Retry(delay=int((busy_sec + 0.5) * 1000))
    settings = rt.settings
    attempted = callback_allowed(callback_url, settings.webapp_url, settings.allowed_callback_hosts)
    if attempted:
        outcome, refused = _post(rt, key, job_id, callback_url, payload)
        failpoint("delivery.after_post")
    else:
        outcome = "refused"
        refused = "Result not delivered: the callback host is not the cloud's (allowed_callback_hosts)"
        logger.error("Job %s: %s.", job_id, refused)
    pipe = rt.local_redis.pipeline(transaction=False)
    pipe.hset(key, mapping={"delivered": repr(time.time()), **({"refused": refused} if refused else {})})
    pipe.expire(key, DELIVERED_TTL_SEC)
    if attempted:
        rt.state.count("webhook_attempts", pipe=pipe)
    if outcome == "delivered" and payload.get("status") == "completed":
        rt.state.count("jobs_completed", pipe=pipe)
        rt.state.set_last_job_at(pipe=pipe)
    elif outcome != "duplicate":
        rt.state.count("jobs_failed", pipe=pipe)
    pipe.execute()
    _write_terminal_status(rt, job_id, payload, refused)
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
