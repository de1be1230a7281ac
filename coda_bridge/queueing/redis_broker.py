"""The local dramatiq broker: Redis, one namespace per QPU, woken on enqueue.

dramatiq's Redis consumer polls an empty queue with a growing sleep (up
to ``worker_timeout``), which costs up to a second per hop.  Here each
enqueue also pushes a wake-up token in the same round trip, and an idle
consumer blocks on that token list (``BLPOP``) instead of sleeping: a
message reaches an idle worker at once, and an idle worker costs one
blocking call per timeout.  Dead-worker recovery runs on a clock rather
than by chance, so a killed worker's messages return within
``heartbeat_timeout`` plus one maintenance interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import (
    AgeLimit,
    CurrentMessage,
    ShutdownNotifications,
    TimeLimit,
)

from ..metrics.observations import DramatiqMetrics
from ..settings import Settings
from ..state.broker_keys import broker_namespace, dead_queue_key, queue_key, wake_key
from .broker_client import broker_client
from .entry_index import EntryIndex
from .failure_logs import SmallFailureLogs
from .middleware import IsolateWorkerProcess, RefusalAwareRetries
from .queues import QUEUES
from .refusal import RefusalNotice, refusal

__all__ = [
    "CodaBroker",
    "broker_namespace",
    "create_broker",
]


#: Wake-up tokens kept per queue; more would only cause spurious wake-ups.
WAKE_TOKENS_MAX = 64
#: Longest pause of a consumer whose prefetch is full (waiting for its own work to finish).
BUSY_BACKOFF_MAX_SEC = 0.05
#: Pause between attempts to move a due delayed message onto its queue while the broker refuses writes.
REFUSAL_RETRY_SEC = 1.0
#: Commands that never trigger maintenance (as in dramatiq).
_NO_MAINTENANCE = frozenset({"ack", "nack"})


class CodaBroker(RedisBroker):
    """A :class:`RedisBroker` that wakes idle consumers on enqueue and does maintenance on a clock."""

    def __init__(self, *, maintenance_interval_sec: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.maintenance_interval_sec = maintenance_interval_sec
        self._last_maintenance: dict[str, float] = {}
        #: Called with the pipeline of every enqueue and each message on it (the entry index writes there).
        self.enqueue_hooks: list[Callable[[Any, Message[Any]], None]] = []

    # dramatiq internals, each overridden for one reason:
    # - consumer_class / _RedisConsumer: dramatiq's consumer sleeps when its queue is empty; ours blocks on
    #   the wake-up list instead (an idle node answers a new job at once, not within the sleep).
    # - _dispatch: dramatiq runs maintenance (requeueing a dead worker's messages) on a random 1 in N
    #   commands; ours runs it on a clock per queue, so recovery time is bounded.
    # - scripts["dispatch"] (in _pipe_enqueue): calling dramatiq's own Lua enqueue on a pipeline lets one
    #   round trip carry many messages, the wake-up token and the entry index (enqueue_many).
    # Each is checked by tests against the installed dramatiq (tests/queueing, tests/pipeline).

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def wake_key(self, queue_name: str) -> str:
        return wake_key(self.namespace, queue_name)

    def _maintenance_due(self, command: str, queue_name: str) -> int:
        """1 when ``queue_name`` had no maintenance from this process for an interval (it is per queue)."""
        if command in _NO_MAINTENANCE:
            return 0
        now = time.monotonic()
        if now - self._last_maintenance.get(queue_name, 0.0) < self.maintenance_interval_sec:
            return 0
        self._last_maintenance[queue_name] = now
        return 1

    def _dispatch(self, command: str) -> Any:
        """dramatiq's dispatch, with maintenance on a per-queue clock instead of by chance."""
        dispatch = self.scripts["dispatch"]
        keys = [self.namespace]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            header = [
                command,
                current_millis(),
                queue_name,
                self.broker_id,
                self.heartbeat_timeout,
                self.dead_message_ttl,
                self._maintenance_due(command, queue_name),
                self._max_unpack_size(),
            ]
            return dispatch(args=[*header, *args], keys=keys)

        return do_dispatch

    def _pipe_enqueue(self, pipe: Any, queue_name: str, message_id: str, data: bytes) -> None:
        args = [
            "enqueue",
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._maintenance_due("enqueue", queue_name),
            self._max_unpack_size(),
            message_id,
            data,
        ]
        self.scripts["dispatch"](keys=[self.namespace], args=args, client=pipe)

    def _pipe_wake(self, pipe: Any, queue_name: str, tokens: int = 1) -> None:
        wake = self.wake_key(queue_name)
        pipe.lpush(wake, *([1] * min(tokens, WAKE_TOKENS_MAX)))
        pipe.ltrim(wake, 0, WAKE_TOKENS_MAX - 1)

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> None:
        """Enqueue, run the enqueue hooks and push a wake-up token, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        self._pipe_enqueue(pipe, queue_name, message_id, data)
        if self.enqueue_hooks:
            message = Message.decode(data)
            for hook in self.enqueue_hooks:
                hook(pipe, message)
        self._pipe_wake(pipe, queue_name)
        pipe.execute()

    def enqueue_many(self, messages: list[Message[Any]]) -> list[Message[Any]]:
        """Enqueue several messages (no delay) in one round trip, middleware hooks included."""
        if not messages:
            return []
        copies = [m.copy(options={"redis_message_id": str(uuid4())}) for m in messages]
        pipe = self.client.pipeline(transaction=False)
        per_queue: dict[str, int] = {}
        for message in copies:
            self.emit_before("enqueue", message, None)
            self._pipe_enqueue(
                pipe, message.queue_name, message.options["redis_message_id"], message.encode()
            )
            for hook in self.enqueue_hooks:
                hook(pipe, message)
            per_queue[message.queue_name] = per_queue.get(message.queue_name, 0) + 1
        for queue_name, count in per_queue.items():
            self._pipe_wake(pipe, queue_name, count)
        pipe.execute()
        for message in copies:
            self.emit_after("enqueue", message, None)
        return copies

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """dramatiq's enqueue; a delayed message due on its queue waits out a broker that refuses writes.

        A message with a Redis id and no delay is dramatiq's worker moving a delayed message it holds
        (unacknowledged) onto its queue: if that enqueue fails, the worker forgets the message while it
        stays unacknowledged, lost until the worker restarts. So a refusal is retried until it passes.
        """
        if delay is not None or "redis_message_id" not in message.options:
            return super().enqueue(message, delay=delay)
        while True:
            try:
                return super().enqueue(message)
            except redis.ResponseError as exc:
                if refusal(exc) is None:
                    raise
                time.sleep(REFUSAL_RETRY_SEC)

    def wait_for_enqueue(self, queue_name: str, timeout_sec: float) -> None:
        """Block until something is enqueued on ``queue_name``, or the timeout passes."""
        self.client.blpop([self.wake_key(queue_name)], timeout=max(timeout_sec, 0.01))

    def queue_sizes(self) -> dict[str, int]:
        """Messages waiting (not yet fetched) per declared queue, and dead-lettered per queue."""
        pipe = self.client.pipeline(transaction=False)
        names = sorted(self.queues)
        for name in names:
            pipe.llen(queue_key(self.namespace, name))
            pipe.zcard(dead_queue_key(self.namespace, name))
        counts = pipe.execute()
        sizes = {}
        for index, name in enumerate(names):
            sizes[name] = int(counts[2 * index])
            sizes[f"{name}.dead"] = int(counts[2 * index + 1])
        return sizes


class _WakingConsumer(_RedisConsumer):
    """dramatiq's Redis consumer, blocking on wake-up tokens instead of sleeping when idle."""

    broker: CodaBroker

    def __init__(self, broker: CodaBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._busy_sleep = 0.001

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    self._busy_sleep = 0.001
                    return MessageProxy(message)
                if self.outstanding_message_count >= self.prefetch:
                    time.sleep(self._busy_sleep)
                    self._busy_sleep = min(self._busy_sleep * 2, BUSY_BACKOFF_MAX_SEC)
                    return None
                try:
                    self.message_cache = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                except redis.ResponseError as exc:
                    if refusal(exc) is None:
                        raise
                    # a broker that refuses writes cannot hand out messages: idle as on an empty queue,
                    # keeping the delayed messages and the acknowledgements this worker still owes
                    time.sleep(self.timeout / 1000)
                    return None
                if not self.message_cache:
                    self.broker.wait_for_enqueue(self.queue_name, self.timeout / 1000)
                    return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    # dramatiq retries an acknowledgement or a hand-back after a connection error until it passes, and
    # gives up on any other error, leaving the message with this live worker for good: a refusal of writes
    # (OOM, READONLY, LOADING, MISCONF) passes too, so it is retried as a lost connection is.
    def ack(self, message: MessageProxy) -> None:
        try:
            super().ack(message)
        except redis.ResponseError as exc:
            if refusal(exc) is None:
                raise
            self.queued_message_ids.add(message.message_id)  # still ours until the retry passes
            raise ConnectionClosed(exc) from None

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)
        except redis.ResponseError as exc:
            if refusal(exc) is None:
                raise
            self.queued_message_ids.add(message.message_id)
            raise ConnectionClosed(exc) from None


def create_broker(settings: Settings, *, qpu_id: str | None = None) -> CodaBroker:
    """The broker from ``broker_url``, with a deliberate middleware stack.

    - AgeLimit: dramatiq's, for a message sent with ``max_age``; the node
      sends none (a stale control tick is skipped, not failed, by the
      ``StaleTicks`` middleware the actors add).
    - TimeLimit: the default of an actor that sets none, from
      ``job_time_limit_sec`` (not dramatiq's 10 minutes); every actor of the
      node sets its own (the job actors a backstop behind the executor watch).
    - ShutdownNotifications: long job waits end early on shutdown.
    - Retries: off by default (a failed circuit is a result); the job actors
      retry only across a broker or cloud outage, the result actor has its
      own retry policy.  A retry the broker refuses to queue (OOM,
      READONLY, ...) is one WARNING line per outage, not a CRITICAL.
    - CurrentMessage: actors read their stream entry id and retry count.
    - DramatiqMetrics: dramatiq's Prometheus middleware, writing to this
      Redis so the probes app's ``/metrics`` serves ``dramatiq_*`` for every
      worker (no exposition server per worker process).
    - SmallFailureLogs: a failing message is logged cut, and its retries
      in one line each (never the whole message again); a broker refusing
      writes, one WARNING line per outage (it shares the retries' notice).
    """
    qpu = qpu_id or settings.qpu_id or "unprovisioned"
    refusals = RefusalNotice()
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=int(settings.job_time_limit_sec * 1000), interval=1000),
        ShutdownNotifications(),
        RefusalAwareRetries(refusals, max_retries=0),
        CurrentMessage(),
        IsolateWorkerProcess(),
        DramatiqMetrics(qpu),
        SmallFailureLogs(refusals),
    ]
    broker = CodaBroker(
        client=broker_client(settings.broker_url),
        namespace=broker_namespace(qpu),
        middleware=middleware,
        heartbeat_timeout=int(settings.worker_heartbeat_timeout_sec * 1000),
        # dead-lettered results are replayable for ten years, not dramatiq's seven days
        dead_message_ttl=10 * 365 * 86_400_000,
    )
    for queue in QUEUES:
        broker.declare_queue(queue)
    if settings.qpu_id or qpu_id:
        broker.enqueue_hooks.append(EntryIndex(broker.client, qpu, broker.namespace).record)
    return broker
