"""The layout of every message the node enqueues into dramatiq: built and read here only.

Each kind is a queue, an actor and the actor's arguments:

- ``execute(fields, entry_id)`` on the jobs queue: one stream entry's job;
- ``execute_batch([[fields, entry_id], ...])`` on the jobs queue: several
  waiting jobs for an executor that batches;
- ``deliver(job_id, callback_url, entry_id)`` on the results queue: a
  recorded result to post; once it runs out of retries dramatiq sends
  ``dead_lettered(message, retry_info)`` with the ``deliver`` message as a dict;
- ``deliver_batch([[job_id, callback_url, entry_id], ...])`` on the results
  queue: the recorded results of a batch, one attempt each; each that needs
  another goes on as its own ``deliver`` (with its retry count);
- ``heartbeat`` / ``vpn_check(slot_ts, expires_at=...)`` on the control queue:
  a periodic tick, stale once ``expires_at`` (Unix seconds) passed.

The actors' signatures (``actors/``) are the other side of this contract;
the entry index, reconcile and dead letters read a message through the
readers below, which never raise on a message of another shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from .queues import (
    CONTROL_QUEUE,
    DELIVER_ACTOR,
    DELIVER_BATCH_ACTOR,
    EXECUTE_ACTOR,
    EXECUTE_BATCH_ACTOR,
    JOBS_QUEUE,
    RESULTS_QUEUE,
)

__all__ = [
    "SPENT_OPTIONS",
    "batch_message",
    "carried_entries",
    "deliveries_message",
    "delivery_message",
    "delivery_of",
    "job_message",
    "jobs_of",
    "replay_message",
    "tick_message",
    "tick_slot",
]

#: Options of a dead message that must not travel with its replay.
SPENT_OPTIONS = ("retries", "traceback", "redis_message_id")

#: One stream entry as the jobs queue carries it: the entry's fields and its id.
JobEntry = tuple[Mapping[str, str], str]


def job_message(fields: Mapping[str, str], entry_id: str) -> dramatiq.Message[Any]:
    """The ``execute`` message for one stream entry."""
    return dramatiq.Message(
        queue_name=JOBS_QUEUE, actor_name=EXECUTE_ACTOR, args=(dict(fields), entry_id), kwargs={}, options={}
    )


def batch_message(entries: Sequence[JobEntry]) -> dramatiq.Message[Any]:
    """One ``execute_batch`` message for several waiting entries (the executor has ``batch_run``)."""
    return dramatiq.Message(
        queue_name=JOBS_QUEUE,
        actor_name=EXECUTE_BATCH_ACTOR,
        args=([[dict(fields), entry_id] for fields, entry_id in entries],),
        kwargs={},
        options={},
    )


def delivery_message(
    job_id: str, callback_url: str, entry_id: str | None, *, retries: int = 0
) -> dramatiq.Message[Any]:
    """The ``deliver`` message of a recorded result; ``retries`` attempts of it were made already."""
    return dramatiq.Message(
        queue_name=RESULTS_QUEUE,
        actor_name=DELIVER_ACTOR,
        args=(job_id, callback_url, entry_id),
        kwargs={},
        options={"retries": retries} if retries else {},
    )


def deliveries_message(deliveries: Sequence[tuple[str, str, str | None]]) -> dramatiq.Message[Any]:
    """The ``deliver`` message of one recorded result, or one ``deliver_batch`` message for several."""
    if len(deliveries) == 1:
        return delivery_message(*deliveries[0])
    return dramatiq.Message(
        queue_name=RESULTS_QUEUE,
        actor_name=DELIVER_BATCH_ACTOR,
        args=([list(delivery) for delivery in deliveries],),
        kwargs={},
        options={},
    )


def tick_message(actor_name: str, slot_ts: float, expires_at: float) -> dramatiq.Message[Any]:
    """A control tick: the start of its slot, and the moment it goes stale (Unix seconds)."""
    return dramatiq.Message(
        queue_name=CONTROL_QUEUE,
        actor_name=actor_name,
        args=(slot_ts,),
        kwargs={"expires_at": expires_at},
        options={},
    )


def replay_message(message: dramatiq.Message[Any], queue_name: str) -> dramatiq.Message[Any]:
    """A dead-lettered message sent again on ``queue_name``: same call, a fresh retry count."""
    options = {k: v for k, v in message.options.items() if k not in SPENT_OPTIONS}
    return dramatiq.Message(
        queue_name=queue_name,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
    )


def carried_entries(message: dramatiq.Message[Any]) -> list[tuple[str, str]]:
    """The ``(entry_id, job_id)`` pairs a message carries, by the shape of its actor's arguments."""
    args = message.args
    try:
        if message.actor_name == EXECUTE_ACTOR:
            return [(str(args[1]), str(args[0].get("job_id") or ""))]
        if message.actor_name == EXECUTE_BATCH_ACTOR:
            return [(str(entry_id), str(fields.get("job_id") or "")) for fields, entry_id in args[0]]
        if message.actor_name == DELIVER_ACTOR and len(args) > 2 and args[2]:
            return [(str(args[2]), str(args[0]))]
        if message.actor_name == DELIVER_BATCH_ACTOR:
            return [(str(entry_id), str(job_id)) for job_id, _, entry_id in args[0] if entry_id]
    except (IndexError, TypeError, ValueError, AttributeError):
        return []
    return []


def delivery_of(message: dramatiq.Message[Any] | Mapping[str, Any]) -> tuple[Any, Any]:
    """The job id and callback URL a ``deliver`` message names (``None`` where it names none); for a
    ``deliver_batch``, its job ids joined by ``,`` and its first callback URL.

    Takes the message, or the dict dramatiq hands to ``dead_lettered``.
    """
    args = message.get("args") if isinstance(message, Mapping) else message.args
    first = (args or [None])[0]
    if isinstance(first, list) and all(isinstance(item, list | tuple) and len(item) == 3 for item in first):
        return ",".join(str(item[0]) for item in first) or None, (first[0][1] if first else None)
    job_id, callback = [*(args or ()), None, None][:2]
    return job_id, callback


def jobs_of(message: dramatiq.Message[Any]) -> tuple[str | None, Any]:
    """The job ids (joined by ``,`` for a batch) and the callback URL a job message names."""
    job_ids = ",".join(job for _, job in carried_entries(message)) or None
    fields = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
    return job_ids, fields.get("callback_url")


def tick_slot(message: dramatiq.Message[Any] | MessageProxy) -> tuple[float, float | None]:
    """A tick's slot start and the moment it goes stale (``None``: never)."""
    slot_ts = message.args[0] if message.args else 0.0
    return float(slot_ts), message.kwargs.get("expires_at")
