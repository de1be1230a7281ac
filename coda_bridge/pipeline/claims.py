"""The node's local record of each job: a claim while it runs, and its one recorded result.

A claim is a lease in the local Redis, so no two workers run one job at
once; a result is recorded once (first writer wins), so a rerun after a
crash delivers the recorded one instead of running again.  Each step takes
a whole batch of jobs in one round trip.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from ..broker.keys import claim_key, job_key
from ..runtime import Runtime

__all__ = [
    "CLAIM_LEASE_SEC",
    "Claim",
    "acquire_claims",
    "record_patiently",
    "record_result",
    "record_results",
    "release_claims",
]

logger = logging.getLogger(__name__)

#: Lease of a job claim; refreshed at every cancel poll while the job runs, so it
#: lapses this long after its holder died.
CLAIM_LEASE_SEC = 15.0
#: How long a recorded result is kept (it is normally delivered within seconds).
RESULT_TTL_SEC = 30 * 86_400
#: How long a finished job's result may wait for the local Redis before the job is given up (and rerun).
RECORD_PATIENCE_SEC = 300.0
RECORD_RETRY_START_SEC = 1.0
RECORD_RETRY_MAX_SEC = 30.0

_REFRESH_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
    "return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"
)
_RELEASE_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Claim:
    """A lease on one job in the local Redis, so one job never runs twice at once."""

    def __init__(self, rt: Runtime, job_id: str) -> None:
        self.rt = rt
        self.key = claim_key(rt.qpu_id, job_id)
        self.job_id = job_id
        self.token = uuid.uuid4().hex

    def refresh(self) -> bool:
        """Extend the lease if the claim is still ours; False (and a loud log) if it was lost."""
        pipe = self.rt.local_redis.pipeline(transaction=False)
        pipe.eval(_REFRESH_IF_OURS, 1, self.key, self.token, int(CLAIM_LEASE_SEC * 1000))
        self.rt.state.job_alive(self.job_id, CLAIM_LEASE_SEC, pipe=pipe)
        ours = bool(pipe.execute()[0])
        if not ours:
            logger.error("Job %s: its claim lapsed while it ran (process stalled?).", self.job_id)
        return ours


def acquire_claims(rt: Runtime, claims: Sequence[Claim]) -> list[tuple[bool, str | None, float]]:
    """Take each claim; also return each job's recorded result and the lease left (one round trip)."""
    pipe = rt.local_redis.pipeline(transaction=False)
    for claim in claims:
        pipe.set(claim.key, claim.token, nx=True, px=int(CLAIM_LEASE_SEC * 1000))
        pipe.hget(job_key(rt.qpu_id, claim.job_id), "result")
        pipe.pttl(claim.key)
    replies = pipe.execute() if claims else []
    return [
        (bool(taken), _text(recorded), max(int(ttl_ms), 0) / 1000)
        for taken, recorded, ttl_ms in zip(replies[0::3], replies[1::3], replies[2::3], strict=True)
    ]


def release_claims(rt: Runtime, claims: Sequence[Claim]) -> None:
    """Give the claims back, each unless its lease lapsed and another worker holds it now (one round trip)."""
    if not claims:
        return
    pipe = rt.local_redis.pipeline(transaction=False)
    for claim in claims:
        pipe.eval(_RELEASE_IF_OURS, 1, claim.key, claim.token)
    rt.state.jobs_ended([claim.job_id for claim in claims], pipe=pipe)
    pipe.execute()


def record_results(rt: Runtime, results: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Record each job's result unless one is recorded; return the ones that count (one round trip)."""
    pipe = rt.local_redis.pipeline(transaction=False)
    for job_id, payload in results:
        key = job_key(rt.qpu_id, job_id)
        pipe.hsetnx(key, "result", json.dumps(payload, separators=(",", ":")))
        pipe.expire(key, RESULT_TTL_SEC)
        pipe.hget(key, "result")
    replies = pipe.execute() if results else []
    return [str(_text(recorded)) for recorded in replies[2::3]]


def record_result(rt: Runtime, job_id: str, payload: Mapping[str, Any]) -> str:
    """Record the job's result unless one is recorded already; return the one that counts."""
    return record_results(rt, [(job_id, payload)])[0]


def record_patiently(rt: Runtime, results: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Record results that so far exist only in memory (one round trip), riding out a local Redis outage.

    Giving up here would mean running the jobs again, so it tries for a
    while; a retry records the same results again, which first-writer-wins
    makes harmless.
    """
    delay = RECORD_RETRY_START_SEC
    deadline = time.monotonic() + RECORD_PATIENCE_SEC
    while True:
        try:
            record_results(rt, results)
            return
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                raise
            jobs = ", ".join(job_id for job_id, _ in results)
            logger.warning("Result of job %s not recorded yet (%s); retrying in %.0f s.", jobs, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX_SEC)
