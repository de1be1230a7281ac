"""Which broker message carries each cloud stream entry, so the bridge can tell what the broker lost.

Every enqueue of a message that carries stream entries (``execute``,
``execute_batch``, ``deliver``) also records, in the same round trip, the
entry's queue and the message's Redis id.  An entry is *alive* while that
message is queued (on its queue's list, delayed ones included) or held
unacknowledged by a worker whose heartbeat is fresh, and *parked* while it
sits in its queue's dead-letter queue, a result's or a job's: it waits for
``replay`` (sending a job that fails on every attempt again on each reconcile
pass would leave one dead letter per pass).  A message still in its queue's hash
but held by no live worker (a dead worker's, or one left over after a
refused acknowledgement) is progressed by nobody: it reads as gone.  A
broker that restarted empty, was flushed or failed over loses the records
with the messages, so the entries read as neither, and the bridge forwards
them again.  A record is overwritten whenever a newer message carries the
entry, and forgotten once the entry is acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from dramatiq.message import Message

from ..replies import as_text
from ..state.broker_keys import (
    DEAD_MESSAGES_SUFFIX,
    MESSAGES_SUFFIX,
    acks_key_prefix,
    entry_key,
    heartbeats_key,
    queue_key_prefix,
)
from .messages import carried_entries

__all__ = ["ALIVE", "GONE", "PARKED", "ENTRY_TTL_SEC", "EntryIndex"]

#: How long an entry's record is kept when nothing forgets it (results are kept as long).
ENTRY_TTL_SEC = 30 * 86_400
#: A worker whose dramatiq heartbeat is this much older than the newest is dead (dramatiq's default).
DEFAULT_HEARTBEAT_TIMEOUT_SEC = 60.0
#: What the broker holds of an entry.
GONE, ALIVE, PARKED = 0, 1, 2

#: For each entry key: its message's state (GONE, ALIVE, PARKED) and the job id it names.  ARGV: the
#: queues' key prefix, dramatiq's suffixes of a queue's messages and dead messages, its heartbeats key
#: and unacked-set prefix (from :mod:`~coda_bridge.state.broker_keys`), the heartbeat timeout (ms).  A
#: worker is live when its heartbeat is within the timeout of the newest one: a broker that refused
#: writes for a while (heartbeats too) makes no live worker look dead.
_LIVENESS = """
local newest = redis.call('ZREVRANGE', ARGV[4], 0, 0, 'WITHSCORES')
local live = {}
if newest[2] then
  live = redis.call('ZRANGEBYSCORE', ARGV[4], tonumber(newest[2]) - tonumber(ARGV[6]), '+inf')
end
local out = {}
for i, key in ipairs(KEYS) do
  local rec = redis.call('HMGET', key, 'q', 'm', 'j')
  local state = 0
  if rec[1] then
    local base = ARGV[1] .. rec[1]
    if redis.call('HEXISTS', base .. ARGV[2], rec[2]) == 1 then
      for _, worker in ipairs(live) do
        if redis.call('SISMEMBER', ARGV[5] .. worker .. '.' .. rec[1], rec[2]) == 1 then
          state = 1
          break
        end
      end
      if state == 0 and redis.call('LPOS', base, rec[2]) then
        state = 1
      end
    elseif redis.call('HEXISTS', base .. ARGV[3], rec[2]) == 1 then
      state = 2
    end
  end
  out[i] = {state, rec[3] or false}
end
return out
"""


class EntryIndex:
    """The entry records of one QPU's broker namespace."""

    def __init__(
        self,
        client: redis.Redis,
        qpu_id: str,
        namespace: str,
        *,
        heartbeat_timeout_sec: float = DEFAULT_HEARTBEAT_TIMEOUT_SEC,
    ) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.namespace = namespace
        self.heartbeat_timeout_sec = heartbeat_timeout_sec
        self._liveness = client.register_script(_LIVENESS)

    def record(self, pipe: redis.client.Pipeline, message: Message[Any]) -> None:
        """On ``pipe``: the entries ``message`` carries are now carried by it (its queue and Redis id)."""
        redis_id = message.options.get("redis_message_id")
        if not redis_id:
            return
        for entry_id, job_id in carried_entries(message):
            key = entry_key(self.qpu_id, entry_id)
            pipe.hset(key, mapping={"q": message.queue_name, "m": redis_id, "j": job_id})
            pipe.expire(key, ENTRY_TTL_SEC)

    def liveness(self, entry_ids: Sequence[str]) -> list[tuple[int, str | None]]:
        """For each entry: GONE, ALIVE or PARKED, and the job id its record names (one round trip)."""
        if not entry_ids:
            return []
        keys = [entry_key(self.qpu_id, entry_id) for entry_id in entry_ids]
        args: list[str | int] = [
            queue_key_prefix(self.namespace),
            MESSAGES_SUFFIX,
            DEAD_MESSAGES_SUFFIX,
            heartbeats_key(self.namespace),
            acks_key_prefix(self.namespace),
            int(self.heartbeat_timeout_sec * 1000),
        ]
        replies: Any = self._liveness(keys=keys, args=args)
        return [(int(state), as_text(job_id) or None) for state, job_id in replies]

    def forget(self, entry_ids: Sequence[str], pipe: redis.client.Pipeline | None = None) -> None:
        """The entries were acknowledged: drop their records (on ``pipe`` when given)."""
        if not entry_ids:
            return
        keys = [entry_key(self.qpu_id, entry_id) for entry_id in entry_ids]
        (pipe or self.client).delete(*keys)
