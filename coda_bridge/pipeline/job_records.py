"""The node's record of each job in the broker Redis: its one result, the delivery lease and mark.

This module is the one owner of ``coda-bridge:{qpu_id}:job:{job_id}`` (the
id encoded by :mod:`~coda_bridge.state.broker_keys`).  A result is recorded once
(first writer wins), so a rerun after a crash delivers the recorded one
instead of running again.  A delivery takes a lease first, so one POST of a
job is in flight at a time across every delivery thread and process; a
delivered mark absorbs duplicates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from ..backoff import Backoff
from ..replies import as_text
from ..state.broker_keys import delivery_lease_key, job_key

__all__ = ["RECORD_PATIENCE_SEC", "RESULT_TTL_SEC", "RecordStore"]

logger = logging.getLogger(__name__)

#: How long a recorded result is kept (it is normally delivered within seconds).
RESULT_TTL_SEC = 30 * 86_400
#: How long a delivered mark is kept to absorb duplicate messages (``record_retention_sec`` by default).
DELIVERED_TTL_SEC = 7 * 86_400
#: How long a finished job's result may wait for the local Redis before the job is given up (and rerun).
RECORD_PATIENCE_SEC = 300.0
#: First and longest pause between attempts to record a result while the local Redis is away.
RECORD_RETRY_START_SEC = 1.0
RECORD_RETRY_MAX_SEC = 30.0

#: Read a job's record and, unless it was delivered, take the delivery lease: one atomic round trip.
_READ_AND_LEASE = """
local rec = redis.call('HMGET', KEYS[1], 'result', 'delivered', 'refused')
local left = 0
if rec[1] and not rec[2] and not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then
  left = math.max(redis.call('PTTL', KEYS[2]), 1)
end
return {rec[1], rec[2], rec[3], left}
"""
#: Free a delivery lease only while ``ARGV[1]`` holds it (one that lapsed may be another attempt's now).
_RELEASE_OWN_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Drop a record's expiry for its dead letter, unless it was delivered meanwhile (a replay came first).
_KEEP_UNDELIVERED = """
if redis.call('HEXISTS', KEYS[1], 'delivered') == 1 then return 0 end
redis.call('PERSIST', KEYS[1])
return 1
"""


class RecordStore:
    """The job records of one QPU."""

    def __init__(self, client: redis.Redis, qpu_id: str, *, retention_sec: float = DELIVERED_TTL_SEC) -> None:
        self.client = client
        self.qpu_id = qpu_id
        #: How long a delivered job's record is kept (what the broker holds per job, and for how long).
        self.retention_sec = retention_sec

    def key(self, job_id: str) -> str:
        return job_key(self.qpu_id, job_id)

    def lease_key(self, job_id: str) -> str:
        return delivery_lease_key(self.qpu_id, job_id)

    # -- the result --

    def read_results(self, pipe: redis.client.Pipeline, job_ids: Sequence[str]) -> None:
        """Queue a read of each job's recorded result on ``pipe`` (one reply each: the result or ``None``)."""
        for job_id in job_ids:
            pipe.hget(self.key(job_id), "result")

    def has_result(self, job_id: str) -> bool:
        return bool(self.client.hexists(self.key(job_id), "result"))

    def record(self, results: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Record each job's result unless one is recorded; return the ones that count (one round trip)."""
        if not results:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id, payload in results:
            key = self.key(job_id)
            pipe.hsetnx(key, "result", json.dumps(payload, separators=(",", ":")))
            pipe.expire(key, RESULT_TTL_SEC)
            pipe.hget(key, "result")
        return [str(as_text(recorded)) for recorded in pipe.execute()[2::3]]

    def record_patiently(self, results: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Record results that so far exist only in memory, riding out a local Redis outage.

        Giving up here would mean running the jobs again, so it tries for a
        while; a retry records the same results again, which first-writer-wins
        makes harmless.  Returns the result recorded for each job (see :meth:`record`).
        """
        backoff = Backoff(RECORD_RETRY_START_SEC, RECORD_RETRY_MAX_SEC)
        deadline = time.monotonic() + RECORD_PATIENCE_SEC
        while True:
            try:
                return self.record(results)
            except redis.RedisError as exc:
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    raise
                jobs = ", ".join(job_id for job_id, _ in results)
                logger.warning(
                    "Result of job %s not recorded yet (%s); retrying in %.0f s.", jobs, exc, delay
                )
                time.sleep(delay)

    def read_progress(self, pipe: redis.client.Pipeline, job_ids: Sequence[str]) -> None:
        """Queue on ``pipe`` each job's delivery lease and record (two replies each; see :meth:`progress`)."""
        for job_id in job_ids:
            pipe.exists(self.lease_key(job_id))
            pipe.hmget(self.key(job_id), "result", "delivered")

    @staticmethod
    def progress(replies: Sequence[Any]) -> list[tuple[bool, bool, bool]]:
        """The replies of :meth:`read_progress` as (leased, result recorded, delivered) per job."""
        return [
            (bool(leased), fields[0] is not None, fields[1] is not None)
            for leased, fields in zip(replies[0::2], replies[1::2], strict=True)
        ]

    # -- delivery --

    def read_and_lease(
        self, job_id: str, lease_sec: float, holder: str = "1"
    ) -> tuple[str | None, str | None, str | None, float]:
        """The result, delivered mark and refusal; then 0 if the lease is now ``holder``'s, else its seconds
        left."""
        return self.read_and_lease_many([job_id], lease_sec, holder)[0]

    def read_and_lease_many(
        self, job_ids: Sequence[str], lease_sec: float, holder: str = "1"
    ) -> list[tuple[str | None, str | None, str | None, float]]:
        """:meth:`read_and_lease` for each job, in one round trip (each job's read and lease atomic)."""
        pipe = self.client.pipeline(transaction=False)
        lease_ms = int(lease_sec * 1000)
        for job_id in job_ids:
            pipe.eval(_READ_AND_LEASE, 2, self.key(job_id), self.lease_key(job_id), lease_ms, holder)
        return [
            (as_text(recorded), as_text(delivered), as_text(refused), int(left_ms) / 1000)
            for recorded, delivered, refused, left_ms in pipe.execute()
        ]

    def release_lease(self, job_id: str, pipe: redis.client.Pipeline, holder: str | None = None) -> None:
        """Free the delivery lease on ``pipe``: a failed attempt's only while its ``holder`` has it; with no
        holder, whoever's (the delivered mark stands for the delivery then, so no one posts again)."""
        if holder is None:
            pipe.delete(self.lease_key(job_id))
        else:
            pipe.eval(_RELEASE_OWN_LEASE, 1, self.lease_key(job_id), holder)

    def mark_delivered(self, job_id: str, refused: str | None, pipe: redis.client.Pipeline) -> None:
        """The delivery is over (accepted, or refused for ``refused``), on ``pipe``."""
        key = self.key(job_id)
        pipe.hset(key, mapping={"delivered": repr(time.time()), **({"refused": refused} if refused else {})})
        pipe.expire(key, max(int(self.retention_sec), 1))

    def keep(self, job_id: str) -> bool:
        """A dead-lettered result stays as long as its dead letter: drop the record's expiry; False (and
        the expiry kept) when it was delivered meanwhile (a ``replay`` ran before the dead letter's note)."""
        return bool(self.client.eval(_KEEP_UNDELIVERED, 1, self.key(job_id)))
