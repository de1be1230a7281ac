"""The node's dramatiq middleware: process isolation, stale-tick skips, build-at-boot, the stopping flag,
prompt retries after a cloud outage, retries a refusing broker cannot queue.

Policy lives here as middleware, the dramatiq way, rather than as code
around the actors.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis, dq_name, iter_queue
from dramatiq.middleware import Middleware, Retries, SkipMessage

from ..errors import CodaError
from ..sdnotify import READY, WatchdogPinger, notify, watchdog_interval_sec
from .messages import tick_slot
from .refusal import RefusalNotice, refusal, refusal_advice

__all__ = [
    "Build",
    "BuildAtBoot",
    "IsolateWorkerProcess",
    "PromptAfterOutage",
    "RefusalAwareRetries",
    "StaleTicks",
    "StoppingFlag",
    "SystemdNotify",
]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: How often a worker process looks whether the cloud came back.
CLOUD_BACK_POLL_SEC = 1.0


class IsolateWorkerProcess(Middleware):
    """Give each dramatiq worker process its own process group, and stop it when its master dies.

    honcho, and systemd's default ``KillMode``, signal a whole process group;
    dramatiq's master then forwards the same SIGTERM, and a worker process
    that sees a second SIGTERM exits at once, stranding its messages.  In
    its own group a worker process gets exactly one SIGTERM, from its master.
    """

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if os.getpid() == os.getpgrp() or os.environ.get("CODA_BRIDGE_KEEP_PGRP"):
            return
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class StaleTicks(Middleware):
    """A periodic tick delivered after its slot ended is skipped: acknowledged and logged, never run.

    dramatiq's own age limit would fail the message, which dead-letters it;
    a stale tick is not a failure, only late.  Applies to actors declared
    with ``tick=True``, whose messages carry ``expires_at`` (see the ticker).
    """

    actor_options = {"tick"}

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if not broker.get_actor(message.actor_name).options.get("tick"):
            return
        slot_ts, expires_at = tick_slot(message)
        now = self.clock()
        if expires_at is not None and now >= expires_at:
            logger.info(
                "Dropped a stale %s tick (slot of %.0f, %.1f s past its interval).",
                message.actor_name,
                slot_ts,
                now - expires_at,
            )
            raise SkipMessage()


@dataclasses.dataclass(frozen=True)
class Build:
    """What a worker of ``queue`` builds at boot: ``build()``, named ``what``; ``built()`` once it is."""

    queue: str
    build: Callable[[], object]
    what: str
    built: Callable[[], None] | None = None


class BuildAtBoot(Middleware):
    """A worker builds what its queues need before it takes a message; if it cannot, the worker stops.

    A typo in a device file must leave jobs waiting, not fail every one of
    them: the builds run before the worker's consumers start, so no message
    was taken when one fails.  The worker process then exits with
    :data:`os.EX_CONFIG` (78); dramatiq's master sees a worker
    exit and exits with the same status, ``coda-bridge start`` does not
    restart it, and stops with it.  Other errors are
    left to dramatiq, which logs them; the first job builds again then.
    Each :class:`Build` ``built`` is called once every build of the worker
    succeeded (the worker's registration says it can run jobs).  One middleware holds every
    build: dramatiq warns of a middleware type added twice.
    """

    def __init__(self, *builds: Build) -> None:
        self.builds = builds

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        only = worker.consumer_whitelist
        mine = [build for build in self.builds if not only or build.queue in only]
        for build in mine:
            self._build(build)
        # only once every build succeeded: a worker about to exit 78 never says it can run jobs
        for build in mine:
            if build.built is not None:
                build.built()

    @staticmethod
    def _build(build: Build) -> None:
        try:
            build.build()
        except CodaError as exc:
            reason = " ".join(str(exc).split())
            logger.error(
                "%s cannot be built, so this worker stops (exit %d) and jobs wait in the %s queue: %s",
                build.what,
                os.EX_CONFIG,
                build.queue,
                reason,
            )
            raise SystemExit(os.EX_CONFIG) from exc


class StoppingFlag(Middleware):
    """Set once this worker process begins to stop: jobs finishing in the drain deliver their own results.

    Under ``honcho start`` every process gets SIGTERM at once, so the
    results worker may already be gone when a drained job's result is queued.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.stopping.set()


class SystemdNotify(Middleware):
    """Under a ``Type=notify`` unit: READY=1 once this worker consumes (its executor built), then
    watchdog pings while every consumer and worker thread of it lives; a hung process stops them.

    The unit's main process is dramatiq's master; its worker processes speak
    for it (``NotifyAccess=all``).  Nothing happens outside systemd.
    """

    def __init__(self) -> None:
        self.pinger: WatchdogPinger | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        notify(READY)
        interval = watchdog_interval_sec(main_only=False)
        if interval is not None:
            self.pinger = WatchdogPinger(lambda: _threads_alive(worker), interval).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.pinger is not None:
            self.pinger.stop()


def _threads_alive(worker: dramatiq.Worker) -> bool:
    threads = [*worker.consumers.values(), *worker.workers]
    return bool(threads) and all(thread.is_alive() for thread in threads)


class PromptAfterOutage(Middleware):
    """Once the cloud answers again after an outage, the retries of ``actor`` waiting on their backoff go now.

    dramatiq keeps a message that waits for its retry in the delay queue of
    the worker process that took it, until its eta; after an outage each
    would wait out its own backoff (up to ``webhook_max_backoff_sec``).  A
    thread of each worker process of ``queue`` watches ``back_at`` (when the
    cloud last came back, from the node's shared state) and, when it moves,
    brings those etas forward to now.  The retry count stays as it was.
    """

    def __init__(
        self,
        back_at: Callable[[], float | None],
        actor: str,
        queue: str,
        poll_sec: float = CLOUD_BACK_POLL_SEC,
    ) -> None:
        self.back_at = back_at
        self.actor = actor
        self.delay_queue = dq_name(queue)
        self.poll_sec = poll_sec
        self._lock = threading.Lock()
        self._consumers: list[Any] = []
        self._watcher: threading.Thread | None = None

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        if thread.queue_name != self.delay_queue:
            return
        with self._lock:
            self._consumers.append(thread)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="coda-cloud-back", daemon=True)
                self._watcher.start()

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            if thread in self._consumers:
                self._consumers.remove(thread)

    def _read(self) -> float | None:
        try:
            return self.back_at()
        except redis.RedisError:
            return None

    def _watch(self) -> None:
        seen = self._read()
        while True:
            time.sleep(self.poll_sec)
            back = self._read()
            if back is not None and back != seen:
                seen = back
                moved = self.bring_forward()
                if moved:
                    logger.info("The cloud answers again: %d waiting deliveries go now.", moved)

    def bring_forward(self) -> int:
        """Set the eta of every waiting message of the actor to now; return how many moved."""
        now = current_millis()
        moved = 0
        with self._lock:
            consumers = list(self._consumers)
        for consumer in consumers:
            waiting = consumer.delay_queue
            for item in list(iter_queue(waiting)):  # taken out first: each goes back once
                due = item.message.actor_name == self.actor and item.priority > now
                waiting.put(dataclasses.replace(item, priority=now) if due else item)
                waiting.task_done()
                moved += due
        return moved


class RefusalAwareRetries(Retries):
    """dramatiq's Retries; a retry the broker refuses to queue (OOM, READONLY, ...) is one WARNING line
    per outage (``notice``), not a CRITICAL traceback per attempt.

    dramatiq acknowledges the message all the same: its stream entry stays
    pending at the cloud, and the bridge's reconciler sends it again (a
    recorded result as a delivery) once the broker takes writes.
    """

    def __init__(self, notice: RefusalNotice, **options: Any) -> None:
        super().__init__(**options)
        self.notice = notice

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except redis.ResponseError as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            if self.notice.news():
                logger.warning(
                    "The retry of message %s is not queued: the local broker refuses writes: %s (%s); its "
                    "stream entry is sent again by the reconciler once writes pass.",
                    message.message_id,
                    reason,
                    refusal_advice(reason),
                )
