"""dramatiq's dead-letter queue of results, read and replayed for ``coda-bridge replay``.

A result that exhausts its delivery retries stays there (for ten years,
see :func:`~coda_bridge.broker.redis_broker.create_broker`) until replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.message import Message

from ..broker.queues import RESULTS_QUEUE
from ..broker.redis_broker import CodaBroker
from ..replies import as_text

__all__ = ["DeadLetter", "dead_letters", "replay_dead_letters"]


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
        redis_id = as_text(raw_id) or ""
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
