"""dramatiq's dead-letter queues of the node, read and replayed for ``coda-bridge replay``.

A result that exhausts its delivery retries stays there (for ten years,
see :func:`~coda_bridge.queueing.redis_broker.create_broker`) until replayed;
its stream entry stays pending meanwhile.  A job message should never end
there (a job that cannot run is a ``failed`` result), but one that met a
long broker outage, or an error in the node's own code, can: it is listed
and replayed the same way, and the bridge's reconcile pass leaves it there
(sent again on every pass, a job that fails each time would add a dead
letter per pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq.message import Message

from ..queueing.messages import delivery_of, jobs_of, replay_message
from ..queueing.queues import JOBS_QUEUE, QUEUES, RESULTS_QUEUE
from ..queueing.redis_broker import CodaBroker
from ..replies import as_text
from ..state.broker_keys import dead_messages_key, dead_queue_key
from .timeline import Timeline

__all__ = ["DeadLetter", "dead_letters", "replay_dead_letters"]


@dataclass(frozen=True)
class DeadLetter:
    """A message that exhausted its retries: a result to deliver, or a job to run."""

    queue: str
    actor: str
    message_id: str
    redis_message_id: str
    job_id: str
    callback_url: str
    retries: int
    dead_since: float
    #: The error of its last attempt (the cloud's words for a refused result), one line.
    reason: str = ""


def _xq(broker: CodaBroker, queue: str) -> tuple[str, str]:
    return dead_queue_key(broker.namespace, queue), dead_messages_key(broker.namespace, queue)


def _letter(queue: str, redis_id: str, score: float, message: Message[Any]) -> DeadLetter:
    job_id, callback = delivery_of(message) if queue == RESULTS_QUEUE else jobs_of(message)
    return DeadLetter(
        queue=queue,
        actor=message.actor_name,
        message_id=message.message_id,
        redis_message_id=redis_id,
        job_id=str(job_id),
        callback_url=str(callback),
        retries=int(message.options.get("retries", 0)),
        dead_since=float(score) / 1000,
        reason=_last_error(message.options.get("traceback")),
    )


def _last_error(traceback: object) -> str:
    """The last line of a dead message's traceback, without the exception's module path."""
    lines = [line.strip() for line in str(traceback or "").splitlines() if line.strip()]
    if not lines:
        return ""
    name, sep, text = lines[-1].partition(": ")
    return text if sep and " " not in name else lines[-1]


def dead_letters(broker: CodaBroker, queues: Sequence[str] = QUEUES) -> list[DeadLetter]:
    """Every dead-lettered message of ``queues``, oldest first within each queue."""
    client = broker.client
    found = []
    for queue in queues:
        zset, msgs = _xq(broker, queue)
        entries: list[Any] = client.zrange(zset, 0, -1, withscores=True)
        for raw_id, score in entries:
            redis_id = as_text(raw_id) or ""
            data: Any = client.hget(msgs, redis_id)
            if data is not None:
                found.append(_letter(queue, redis_id, score, Message.decode(data)))
    return found


def replay_dead_letters(
    broker: CodaBroker,
    job_ids: set[str] | None = None,
    queues: Sequence[str] = (RESULTS_QUEUE, JOBS_QUEUE),
    timeline: Timeline | None = None,
) -> list[DeadLetter]:
    """Queue dead-lettered messages again (all, or those of ``job_ids``); return them.

    Each replayed job's ``timeline`` (when given) says so, in the same round trip.
    """
    replayed = []
    for letter in dead_letters(broker, queues):
        if job_ids is not None and not job_ids & set(letter.job_id.split(",")):
            continue
        zset, msgs = _xq(broker, letter.queue)
        data: Any = broker.client.hget(msgs, letter.redis_message_id)
        if data is None:
            continue
        jobs = [job for job in letter.job_id.split(",") if job and job != "None"]
        # stamped before the enqueue: a worker may deliver the message before the event is written
        events = [timeline.event(job, "replayed", queue=letter.queue) for job in jobs] if timeline else []
        broker.enqueue(replay_message(Message.decode(data), letter.queue))
        pipe = broker.client.pipeline(transaction=False)
        pipe.zrem(zset, letter.redis_message_id)
        pipe.hdel(msgs, letter.redis_message_id)
        if timeline is None:
            pipe.execute()
        else:
            timeline.execute(pipe, events)
        replayed.append(letter)
    return replayed
