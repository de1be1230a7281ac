"""The bridge process: the cloud's job stream into the local dramatiq queue.

Entries are read with ``XREADGROUP`` and handed to the broker, and stay
pending in the consumer group until their job's outcome is at the cloud
(the worker that writes it acknowledges the entry): the cloud's stream is
the ledger, the one store the node cannot lose.  On its own clock, and
first thing after a start, the bridge reconciles its pending entries with
what the broker still holds (:mod:`~coda_bridge.pipeline.reconcile`), so
whatever a broker restart, flush or failover lost is forwarded again.
Entries left pending by consumers that died are claimed after
``claim_idle_sec`` and reconciled the same way.  A cloud Redis outage backs
off 1 s doubling to 60 s and resumes by itself; a deep local queue pauses
reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dramatiq
import redis

from ..backoff import Backoff
from ..cloud.redis_client import cloud_redis_client
from ..cloud.redis_keys import group_name, stream_key
from ..control.pause_book import PauseBook
from ..failpoints import failpoint
from ..queueing.entry_index import GONE, EntryIndex
from ..queueing.messages import batch_message, job_message
from ..queueing.queues import JOBS_QUEUE
from ..queueing.redis_broker import CodaBroker
from ..queueing.refusal import refusal
from ..settings import Settings
from ..state.broker_keys import queue_key
from ..state.node_state import NodeState
from .bounds import BrokerServer, Job, Screened, broker_refusal, pack, round_trips, screen, stand_in
from .checks import shown
from .claims import ClaimBook
from .job_records import RecordStore
from .reconcile import Reconciler
from .status import CloudStatus
from .timeline import Event, Timeline, short_reason

__all__ = ["StreamBridge"]

logger = logging.getLogger(__name__)

#: First and longest pause after the cloud's Redis failed.
OUTAGE_BACKOFF_MIN_SEC = 1.0
OUTAGE_BACKOFF_MAX_SEC = 60.0
#: Pause while the local job queue is too deep.
BACKPRESSURE_PAUSE_SEC = 0.2
#: Entries read per XREADGROUP.
READ_COUNT = 100
#: How often entries idle at dead consumers are looked for.
CLAIM_INTERVAL_SEC = 10.0
#: Longest time between two reconcile passes (a third of ``claim_idle_sec`` when that is shorter,
#: so this bridge's entries never look idle to another consumer).
RECONCILE_INTERVAL_SEC = 10.0
#: Health marks outlive a few read cycles.
HEALTH_TTL_FACTOR = 3

Entry = tuple[str, dict[str, str] | None]


#: How long the bridge trusts what it read of the executor's batch ability.
BATCH_FLAG_TTL_SEC = 5.0


def _message(group: Sequence[Job]) -> dramatiq.Message[Any]:
    if len(group) == 1:
        return job_message(group[0].fields, group[0].entry_id)
    return batch_message([(job.fields, job.entry_id) for job in group])


class StreamBridge:
    """Moves stream entries into the broker for one QPU; ``run()`` until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        broker: CodaBroker,
        state: NodeState,
        *,
        cloud: redis.Redis | None = None,
        on_cycle: Callable[[], None] | None = None,
    ) -> None:
        assert settings.qpu_id and settings.redis_url
        self.settings = settings
        self.broker = broker
        self.state = state
        self.stream = stream_key(settings.qpu_id)
        self.group = group_name(settings.qpu_id)
        self.consumer = settings.resolved_consumer_name
        block_sec = settings.stream_block_ms / 1000
        self.cloud = cloud or cloud_redis_client(settings.redis_url, block_sec=block_sec)
        self.status = CloudStatus(self.cloud, settings.qpu_id)
        self.on_cycle = on_cycle
        self._stopping = threading.Event()
        self._pending_first = True
        self._broker_server = BrokerServer(broker.client)
        self._last_claim = 0.0
        self._last_reconcile = 0.0
        self.reconcile_interval_sec = min(RECONCILE_INTERVAL_SEC, settings.claim_idle_sec / 3)
        # A blocked read holds the next pass back: never longer than the pass interval.
        self.block_ms = max(1, min(settings.stream_block_ms, round(self.reconcile_interval_sec * 1000)))
        records = RecordStore(broker.client, settings.qpu_id)
        self.entries = EntryIndex(
            broker.client,
            settings.qpu_id,
            broker.namespace,
            heartbeat_timeout_sec=settings.worker_heartbeat_timeout_sec,
        )
        self.reconciler = Reconciler(
            self.cloud,
            self.stream,
            self.group,
            self.consumer,
            status=self.status,
            entries=self.entries,
            records=records,
            claims=ClaimBook(
                broker.client, settings.qpu_id, records, state, lease_sec=settings.claim_lease_sec
            ),
            enqueue_many=broker.enqueue_many,
            forward=self._enqueue_jobs,
        )
        self._batch_flag = (False, 0.0)
        self.forwarded = 0
        self.pauses = PauseBook(broker.client, settings.qpu_id)
        self._held: str | None = None
        self.timeline = Timeline(broker.client, settings.qpu_id, retention_sec=settings.record_retention_sec)
        self._events: list[Event] = []

    # -- lifecycle --

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Read, forward and reconcile until stopped, riding out outages of either Redis."""
        backoff = Backoff(OUTAGE_BACKOFF_MIN_SEC, OUTAGE_BACKOFF_MAX_SEC)
        logger.info("Bridge reading %s as %s/%s.", self.stream, self.group, self.consumer)
        while not self.stopping:
            try:
                self.cycle()
            except redis.RedisError as exc:
                self._mark_cloud(False)
                self._pending_first = True
                delay = backoff.next_delay()
                if refusal(exc) is not None:  # the broker answers: try again within a reconcile period
                    delay = min(delay, self.reconcile_interval_sec)
                logger.warning("Redis unavailable (%s); retrying in %.0f s.", exc, delay)
                self._stopping.wait(delay)
            else:
                backoff.reset()
            if self.on_cycle is not None:
                self.on_cycle()
        logger.info("Bridge stopped after forwarding %d entries.", self.forwarded)

    def cycle(self) -> int:
        """One round: group, idle entries of dead consumers, reconcile when due, then new entries."""
        if self._pending_first:
            self.ensure_group()
            self._broker_server.now()  # the server a failed write is later compared with
            self._mark_cloud(True)  # reading from now on: /ready need not wait out a first idle block
            self._last_reconcile = 0.0  # reconcile at once: a restart may follow a broker that lost data
            self._pending_first = False
        try:
            self._look_after_pending()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_vanished()
            return 0
        if self._queue_too_deep() or self._on_hold():
            self.state.stream_read()
            self._stopping.wait(BACKPRESSURE_PAUSE_SEC)
            return 0
        return self._read_new()

    def _look_after_pending(self) -> None:
        """Claim what dead consumers left idle, and reconcile this consumer's entries when due."""
        if time.monotonic() - self._last_claim > CLAIM_INTERVAL_SEC:
            self._last_claim = time.monotonic()
            if self._claim_idle():
                self._last_reconcile = 0.0
        if time.monotonic() - self._last_reconcile > self.reconcile_interval_sec:
            self._last_reconcile = time.monotonic()
            self.reconciler.run_once()

    def _group_vanished(self) -> None:
        logger.warning("Consumer group %s vanished (cloud Redis restarted?); recreating it.", self.group)
        self._pending_first = True

    # -- the stream --

    def ensure_group(self) -> None:
        """Create the consumer group at id 0 with MKSTREAM; an existing group is fine."""
        try:
            self.cloud.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            logger.info("Created consumer group %s on %s.", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_new(self) -> int:
        if self.stopping:  # a stop asked while this round began: no read that would wait for new entries
            return 0
        try:
            reply: Any = self.cloud.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=READ_COUNT,
                block=self.block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_vanished()
                return 0
            raise
        self._mark_cloud(True)
        entries = reply[0][1] if reply else []
        return self._forward(entries)

    def _claim_idle(self) -> int:
        """XAUTOCLAIM entries idle at other (dead) consumers, for the next reconcile; Redis 6.2 and 7 replies.

        The owner of a live entry keeps it from going idle, so what is idle
        here lost its bridge; the reconcile pass forwards it again only if
        the broker holds nothing of it (a worker may still be running it).
        """
        start = "0-0"
        claimed = 0
        min_idle_ms = int(self.settings.claim_idle_sec * 1000)
        while True:
            reply: Any = self.cloud.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_ms,
                start_id=start,
                count=READ_COUNT,
            )
            next_start, ids = reply[0], [entry[0] for entry in reply[1]]
            if ids:
                logger.warning("Claimed %d entries idle at other consumers.", len(ids))
                claimed += len(ids)
            if not ids or next_start in ("0-0", b"0-0"):
                return claimed
            start = next_start

    def _forward(self, entries: Sequence[Entry] | Iterable[Entry]) -> int:
        """Enqueue one message per entry (or per batch); the entries stay pending until their job is over."""
        jobs, deleted = [], []
        for entry_id, fields in entries:
            if fields:
                jobs.append((dict(fields), entry_id))
            else:
                logger.warning("Stream entry %s was deleted before it was read; acknowledging it.", entry_id)
                deleted.append(entry_id)
        for fields, entry_id in jobs:
            if fields.get("job_id"):
                self._events.append(self.timeline.event(fields["job_id"], "received", entry=entry_id))
        self._enqueue_jobs(jobs)
        failpoint("bridge.before_ack")  # just after the hand-over, where entries used to be acknowledged
        if deleted:
            self.status.ack(deleted)
        self.forwarded += len(jobs) + len(deleted)
        self.state.stream_read()
        return len(jobs) + len(deleted)

    def _enqueue_jobs(self, jobs: list[tuple[dict[str, str], str]]) -> None:
        """One ``execute`` message per entry, or ``execute_batch`` groups when the executor batches.

        Entries are screened first (:mod:`~coda_bridge.pipeline.bounds`): an id
        that is not UTF-8 fails here, a job over ``max_job_bytes`` goes on as a
        stand-in that fails, and no message or round trip carries more than
        ``max_job_bytes`` of fields.
        """
        if not jobs:
            return
        budget = self.settings.max_job_bytes
        screened = screen(jobs, budget)
        try:
            self._refuse(screened)
            ready = screened.forward
            if len(ready) > 1 and self._executor_batches():
                groups = pack(ready, self.settings.batch_size, budget)
            else:
                groups = [[job] for job in ready]
            for round_trip in round_trips(groups, budget):
                self._send(round_trip)
        finally:
            events, self._events = self._events, []
            self.timeline.write(events)

    def _refuse(self, screened: Screened) -> None:
        """End the entries refused at intake: ``failed`` at the job's own status hash, and acknowledged."""
        for job_id, entry_id, error in screened.refused:
            logger.error("Stream entry %s failed at intake: %s", entry_id, error)
            self._events.append(self.timeline.event(job_id, "refused", reason=short_reason(error)))
            self.status.failed(job_id, error, entry_id)
            self._events.append(self.timeline.event(job_id, "acknowledged", outcome="failed"))
            self.state.count("jobs_failed")
        if screened.dropped:
            logger.error(
                "Stream entries %s: the job id or callback_url alone exceeds max_job_bytes (%d); "
                "acknowledged without a result.",
                ", ".join(screened.dropped),
                self.settings.max_job_bytes,
            )
            self.status.ack(screened.dropped)
            self.state.count("jobs_skipped", len(screened.dropped))

    def _send(self, groups: list[list[Job]]) -> None:
        """Enqueue one message per group in one round trip; a message the broker refuses stalls nothing.

        After a refusal the messages go one by one (those that got in are
        not sent again), a batch splits into its jobs, and a job the broker
        refuses on its own fails, naming the broker's error.  An outage
        propagates (the bridge backs off and reconciles later).
        """
        # stamped before the enqueue: a worker may take a message, and say "started", before it returns
        sent_at = time.time()
        try:
            self.broker.enqueue_many([_message(group) for group in groups])
        except redis.RedisError as exc:
            if not broker_refusal(exc, self._broker_server.same_answers()):
                raise
            error = exc
        else:
            self._events += [
                self.timeline.event(
                    job.fields["job_id"], "queued", at=sent_at, entry=job.entry_id, batch=len(group)
                )
                for group in groups
                for job in group
                if job.fields.get("job_id")
            ]
            return
        if len(groups) == 1 and len(groups[0]) == 1:
            self._refused_by_broker(groups[0][0], error)
            return
        parts = groups if len(groups) > 1 else [[job] for job in groups[0]]
        entry_ids = [job.entry_id for part in parts for job in part]
        gone = {
            e
            for e, (state, _) in zip(entry_ids, self.entries.liveness(entry_ids), strict=True)
            if state == GONE
        }
        for part in parts:
            if any(job.entry_id in gone for job in part):
                self._send([part])

    def _refused_by_broker(self, job: Job, error: redis.RedisError) -> None:
        size, why = job.size, shown(str(error), 200)
        reason = (
            f"The local broker refused the job's message ({size} bytes of fields): {why}; "
            "lower max_job_bytes or raise the broker's proto-max-bulk-len"
        )
        logger.error("Job %s failed at intake: %s", shown(job.fields.get("job_id")), reason)
        job_id = job.fields.get("job_id")
        # stamped before the stand-in's enqueue: a worker may take it, and record its failure, first
        refused = self.timeline.event(job_id, "refused", reason=short_reason(reason)) if job_id else None
        self.broker.enqueue_many([job_message(stand_in(job.fields, reason), job.entry_id)])
        if refused is not None:
            self._events.append(refused)

    def _executor_batches(self) -> bool:
        capable, read_at = self._batch_flag
        if time.monotonic() - read_at > BATCH_FLAG_TTL_SEC:
            capable = self.settings.batch_size > 1 and self.state.executor_batch()
            self._batch_flag = (capable, time.monotonic())
        return capable

    # -- health and pressure --

    def _mark_cloud(self, healthy: bool) -> None:
        ttl = HEALTH_TTL_FACTOR * max(self.settings.stream_block_ms / 1000, 1.0) + 5
        try:
            self.state.set_cloud_redis(healthy, ttl)
            if healthy:
                self.state.stream_read()
        except redis.RedisError:
            logger.debug("Local Redis unavailable; health not recorded.")

    def _on_hold(self) -> bool:
        """Paused, or the device not ready: new entries wait in the cloud's stream (logged once a change)."""
        reason = self.pauses.hold().reason
        if reason != self._held:
            if reason is not None:
                logger.info("Not reading new stream entries: %s.", reason)
            else:
                logger.info("Reading new stream entries again.")
            self._held = reason
        return reason is not None

    def _queue_too_deep(self) -> bool:
        depth = int(self.broker.client.llen(queue_key(self.broker.namespace, JOBS_QUEUE)))
        return depth > self.settings.max_local_queue
