"""A job's timeline: what each pipeline step did to it, when, and where, for ``coda-bridge job``.

This module is the one owner of ``coda-bridge:{qpu_id}:timeline:{job_id}``
(a Redis list, capped at :data:`MAX_EVENTS`, expiring ``record_retention_sec``
after its last event) and of the event layout: one JSON object per event,
``at`` (Unix seconds), ``event`` (one of :data:`EVENTS`), ``host`` and
``pid``, and a few short details (an attempt number, an outcome, the HTTP
status and the cloud's reason, sizes).  Never a result payload, header or
token: a reason is cut and masked.  Writes are best effort: they ride on a
step's own pipeline or take one round trip, and a failed write is logged
once and never retried, so the timeline never costs a run or a delivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Sequence
from typing import Any

import redis

from ..logs import mask
from ..replies import as_text
from ..state.broker_keys import device_key, timeline_key
from .checks import shown

__all__ = [
    "EVENTS",
    "JOB_ID_MAX_CHARS",
    "MAX_EVENTS",
    "REASON_MAX_CHARS",
    "Event",
    "Timeline",
    "job_id_problem",
    "result_summary",
    "short_reason",
]

logger = logging.getLogger(__name__)

#: A job keeps at most this many events (the oldest go first); a job that went well has about eight.
MAX_EVENTS = 100
#: How much of a reason (the cloud's answer, an error) an event keeps.
REASON_MAX_CHARS = 160
#: The longest job id ``coda-bridge job`` looks up.
JOB_ID_MAX_CHARS = 256

#: The events, in the order a job meets them.
EVENTS = (
    "received",  # the bridge read the job's entry from the cloud's stream
    "queued",  # forwarded into the local dramatiq queue (again, after a reconcile)
    "refused",  # failed at intake (too large, not UTF-8, the broker refused it)
    "cancel_asked",  # the cloud's cancel key was seen
    "started",  # an attempt of the run began on the executor
    "crashed",  # the executor's process died during an attempt
    "finished",  # the run ended: completed, failed or cancelled
    "recorded",  # the one result was recorded (its status and size)
    "delivery",  # one webhook delivery attempt and the cloud's answer
    "dead_lettered",  # deliveries ran out of retries; waits for `coda-bridge replay`
    "replayed",  # `coda-bridge replay` queued it again
    "acknowledged",  # the outcome is at the cloud and the stream entry acknowledged
)

#: A URL's query and fragment, which may carry a token: never kept.
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#]*)[?#]\S*")

#: One event to write: the job id and its fields.
Event = tuple[str, dict[str, Any]]

#: Append a step's events in one command: ARGV is the cap, the expiry (0: persist instead), whether to add
#: the device state the executor last reported (KEYS[1]) to each ``started``, then one event per key after it.
_APPEND = """
local device = false
if ARGV[3] == '1' then device = redis.call('GET', KEYS[1]) end
for i = 2, #KEYS do
  local event = ARGV[i + 2]
  if device and string.find(event, '"event":"started"', 1, true) then
    event = string.sub(event, 1, -2) .. ',"device":' .. cjson.encode(device) .. '}'
  end
  redis.call('RPUSH', KEYS[i], event)
  redis.call('LTRIM', KEYS[i], -tonumber(ARGV[1]), -1)
  if ARGV[2] == '0' then redis.call('PERSIST', KEYS[i]) else redis.call('EXPIRE', KEYS[i], ARGV[2]) end
end
return #KEYS - 1
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode(), usedforsecurity=False).hexdigest()  # what Redis names it by


def job_id_problem(job_id: str) -> str | None:
    """Why ``job_id`` cannot be a job id to look up (empty, too long, control characters), else ``None``."""
    if not job_id:
        return "the job id is empty"
    if len(job_id) > JOB_ID_MAX_CHARS:
        return f"the job id is {len(job_id)} characters long; job ids have at most {JOB_ID_MAX_CHARS}"
    if not job_id.isprintable():
        return f"the job id {shown(job_id, 60)} holds control characters"
    return None


def short_reason(text: object) -> str:
    """A reason as kept: one line, masked, URLs without query, cut to :data:`REASON_MAX_CHARS`."""
    line = _URL_QUERY.sub(r"\1", " ".join(str(text).split()))
    return shown(mask(line), REASON_MAX_CHARS)


class Timeline:
    """The timelines of one QPU's jobs in the broker Redis."""

    def __init__(
        self, client: redis.Redis, qpu_id: str, *, retention_sec: float, max_events: int = MAX_EVENTS
    ) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.retention_sec = retention_sec
        self.max_events = max_events
        self.host = socket.gethostname()
        self._failing = False

    def key(self, job_id: str) -> str:
        return timeline_key(self.qpu_id, job_id)

    def event(self, job_id: str, kind: str, *, at: float | None = None, **detail: Any) -> Event:
        """One event of ``job_id`` in this process, happening ``at`` (default now); ``None`` details are
        left out."""
        stamp = time.time() if at is None else at
        fields = {"at": round(stamp, 3), "event": kind, "host": self.host, "pid": os.getpid()}
        fields.update({name: value for name, value in detail.items() if value is not None})
        return job_id, fields

    # -- writes --

    def add(
        self,
        events: Sequence[Event],
        pipe: redis.client.Pipeline,
        *,
        keep: bool = False,
        with_device: bool = False,
    ) -> None:
        """Queue ``events`` on a step's own pipeline: one command, no round trip of their own.

        ``keep`` drops the expiry instead of renewing it: a dead-lettered job's
        timeline stays as long as its dead letter (a later event renews it).
        ``with_device`` adds the device state the executor last reported to
        each ``started`` event (read by the broker in the same round trip).
        """
        if events:
            pipe.evalsha(_APPEND_SHA, *self._append_args(events, keep=keep, with_device=with_device))

    def _append_args(self, events: Sequence[Event], *, keep: bool, with_device: bool) -> list[Any]:
        keys = [device_key(self.qpu_id), *(self.key(job_id) for job_id, _ in events)]
        ttl = 0 if keep else max(int(self.retention_sec), 1)
        flags = [self.max_events, ttl, 1 if with_device else 0]
        return [len(keys), *keys, *flags, *(_encoded(fields) for _, fields in events)]

    def execute(
        self,
        pipe: redis.client.Pipeline,
        events: Sequence[Event],
        *,
        keep: bool = False,
        with_device: bool = False,
    ) -> list[Any]:
        """Run a step's pipeline with ``events`` added last, and return the step's own replies.

        A step's own failed command raises as it would without the events;
        a failed event write (a key of another type, a broker refusing it) is
        logged once and costs the step nothing.  A broker that lost its
        script cache (a restart) is given the script and the events again.
        """
        own = len(pipe)
        self.add(events, pipe, keep=keep, with_device=with_device)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for reply in replies[:own]:
            if isinstance(reply, Exception):
                raise reply
        errors = [reply for reply in replies[own:] if isinstance(reply, Exception)]
        if errors and isinstance(errors[0], redis.exceptions.NoScriptError):
            errors = self._append_again(events, keep=keep, with_device=with_device)
        if errors:
            self.failed(errors[0])
        elif events:
            self._failing = False
        return replies[:own]

    def _append_again(self, events: Sequence[Event], *, keep: bool, with_device: bool) -> list[Exception]:
        """Load the append script and write ``events`` (they were not: the script was missing)."""
        try:
            self.client.script_load(_APPEND)
            self.client.evalsha(_APPEND_SHA, *self._append_args(events, keep=keep, with_device=with_device))
        except redis.RedisError as exc:
            return [exc]
        return []

    def write(self, events: Sequence[Event], *, with_device: bool = False, keep: bool = False) -> None:
        """Write ``events`` in one round trip, best effort: a failure is logged once, never retried."""
        if not events:
            return
        try:
            self.execute(self.client.pipeline(transaction=False), events, keep=keep, with_device=with_device)
        except (redis.RedisError, OSError) as exc:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """A timeline write failed: one WARNING line until a write succeeds again."""
        if not self._failing:
            self._failing = True
            logger.warning(
                "Job timeline events not written (%s: %s); the jobs go on, `coda-bridge job` misses them.",
                type(exc).__name__,
                short_reason(exc),
            )

    # -- reads --

    def read(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events, oldest first (by their time: several processes write them)."""
        raw: Any = self.client.lrange(self.key(job_id), 0, -1)
        events = []
        for item in raw:
            try:
                fields = json.loads(as_text(item) or "")
            except ValueError:
                continue
            if isinstance(fields, dict) and isinstance(fields.get("at"), int | float):
                events.append(fields)
        return sorted(events, key=lambda fields: fields["at"])

    def expires_in(self, job_id: str) -> int | None:
        """Seconds until the job's timeline expires, ``None`` when it has none."""
        left = int(self.client.ttl(self.key(job_id)))
        return left if left >= 0 else None


def result_summary(recorded: str) -> dict[str, Any]:
    """What an event tells of a recorded result: its status, its size and a failure's reason, not its data."""
    try:
        result = json.loads(recorded)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        return {"bytes": len(recorded.encode())}
    error = result.get("error")
    return {
        "outcome": result.get("status"),
        "bytes": len(recorded.encode()),
        "reason": short_reason(error) if error else None,
    }


def _encoded(fields: dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True, default=str)
