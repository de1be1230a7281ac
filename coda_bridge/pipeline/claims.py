"""Job claims: a lease in the broker Redis held by the one worker running a job.

No two workers run one job at once; a claim whose holder died lapses after
its lease.  Taking a batch's claims also reads each job's recorded result
(through :class:`~coda_bridge.pipeline.job_records.RecordStore`), in the same round trip.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import redis

from ..replies import as_text
from ..state.broker_keys import claim_key
from ..state.node_state import NodeState
from .job_records import RecordStore

__all__ = ["Claim", "ClaimBook"]

logger = logging.getLogger(__name__)

_REFRESH_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
    "return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"
)
_RELEASE_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class Claim:
    """A lease on one job, identified by a token of its own."""

    def __init__(self, book: ClaimBook, job_id: str) -> None:
        self.book = book
        self.key = claim_key(book.qpu_id, job_id)
        self.job_id = job_id
        self.token = uuid.uuid4().hex

    def refresh(self) -> bool:
        """Extend the lease if the claim is still ours; False (and a loud log) if it was lost."""
        pipe = self.book.client.pipeline(transaction=False)
        pipe.eval(_REFRESH_IF_OURS, 1, self.key, self.token, int(self.book.lease_sec * 1000))
        self.book.state.job_alive(self.job_id, self.book.lease_sec, pipe=pipe)
        ours = bool(pipe.execute()[0])
        if not ours:
            logger.error("Job %s: its claim lapsed while it ran (process stalled?).", self.job_id)
        return ours


class ClaimBook:
    """The claims of one QPU; running jobs are also marked in the node's shared state.

    A claim's lease (``claim_lease_sec``) is refreshed at every cancel poll while its job runs
    or waits its turn, so it lapses this long after its holder died.
    """

    def __init__(
        self, client: redis.Redis, qpu_id: str, records: RecordStore, state: NodeState, *, lease_sec: float
    ) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.records = records
        self.state = state
        self.lease_sec = lease_sec

    def claim(self, job_id: str) -> Claim:
        return Claim(self, job_id)

    def acquire(self, claims: Sequence[Claim]) -> list[tuple[bool, str | None, float]]:
        """Take each claim; also return each job's recorded result and the lease left (one round trip)."""
        if not claims:
            return []
        pipe = self.client.pipeline(transaction=False)
        for claim in claims:
            pipe.set(claim.key, claim.token, nx=True, px=int(self.lease_sec * 1000))
            self.records.read_results(pipe, [claim.job_id])
            pipe.pttl(claim.key)
        replies = pipe.execute()
        return [
            (bool(taken), as_text(recorded), max(int(ttl_ms), 0) / 1000)
            for taken, recorded, ttl_ms in zip(replies[0::3], replies[1::3], replies[2::3], strict=True)
        ]

    def read_held(self, pipe: redis.client.Pipeline, job_ids: Sequence[str]) -> None:
        """Queue on ``pipe`` whether each job's claim is held now (one reply each: 0 or 1)."""
        for job_id in job_ids:
            pipe.exists(claim_key(self.qpu_id, job_id))

    def release(self, claims: Sequence[Claim], *, pipe: redis.client.Pipeline | None = None) -> None:
        """Give the claims back, each unless it lapsed and another worker holds it now (one round trip).

        On ``pipe`` when given (the caller runs it), else on a pipeline of its own.
        """
        if not claims:
            return
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if pipe is None else pipe
        for claim in claims:
            pipe.eval(_RELEASE_IF_OURS, 1, claim.key, claim.token)
        self.state.jobs_ended([claim.job_id for claim in claims], pipe=pipe)
        if own:
            pipe.execute()
