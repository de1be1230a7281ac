"""Jobs workers obey the pause and the device state: a job already queued waits, never fails, never runs.

:class:`HoldJobs` is dramatiq middleware of the jobs worker.  Before a job
message is processed it asks the executor's ``status()`` (between jobs,
off the device's path) and reads the node's hold; while the node is paused
or the device is not ready, the worker thread waits with the message in
hand (the broker's heartbeat keeps it this worker's), so nothing starts and
nothing is lost.  A worker that stops while holding puts the message back
on its queue.  :class:`DeviceWatch` keeps the device state fresh in node
state while no job starts, so ``/ready``, ``/metrics`` and the bridge see it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from ..device import STATUS_TIMEOUT_SEC, DeviceState, read_device_state
from ..errors import CodaError
from ..queueing.queues import JOBS_QUEUE
from .pause_book import NodeHold, PauseBook

__all__ = ["DeviceWatch", "HoldJobs"]

logger = logging.getLogger(__name__)

#: How often a held job looks at the node's hold again (a resume reaches it within this).
HOLD_POLL_SEC = 0.25
#: A device state report lives this many poll intervals unless renewed.
DEVICE_TTL_FACTOR = 3


class DeviceWatch:
    """Asks the executor's ``status()`` on a clock and before jobs, and writes the answer to node state."""

    def __init__(
        self,
        executor: Callable[[], Any],
        book: PauseBook,
        interval_sec: float,
        *,
        timeout_sec: float = STATUS_TIMEOUT_SEC,
    ) -> None:
        self.executor = executor
        self.book = book
        self.interval_sec = interval_sec
        self.timeout_sec = timeout_sec
        self.last: DeviceState | None = None
        self._asking: threading.Thread | None = None
        self._polled_at = float("-inf")
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def poll(self) -> DeviceState | None:
        """Read the device state now; record it (with an expiry) when the executor reports one."""
        with self._lock:
            self._polled_at = time.monotonic()
            try:
                state = self._ask(self.executor())
            except CodaError:  # the executor cannot be built: BuildAtBoot has said so
                return None
            if state != self.last:
                if state is not None:
                    logger.info("Device state: %s.", state.value)
                self.last = state
            if state is not None:
                self.book.set_device_state(state, self.interval_sec * DEVICE_TTL_FACTOR + 1)
            return state

    def _ask(self, executor: Any) -> DeviceState | None:
        """``status()`` on a thread of its own, for at most ``timeout_sec``: one that hangs reads as error.

        While a call that hung has not returned, no other is made (hung threads do not pile up).
        """
        if self._asking is not None and self._asking.is_alive():
            return DeviceState.ERROR
        answer: list[DeviceState | None] = []
        self._asking = threading.Thread(
            target=lambda: answer.append(read_device_state(executor)), name="coda-device-status", daemon=True
        )
        self._asking.start()
        self._asking.join(self.timeout_sec)
        if not answer:
            logger.warning(
                "Executor status() did not answer within %g s; device state is error.", self.timeout_sec
            )
            return DeviceState.ERROR
        return answer[0]

    def poll_if_due(self) -> None:
        if time.monotonic() - self._polled_at >= self.interval_sec:
            self.poll()

    def start(self) -> DeviceWatch:
        threading.Thread(target=self._run, name="coda-device-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_if_due()
            except redis.RedisError as exc:
                logger.warning("Device state not recorded: the broker Redis does not answer (%s).", exc)
            except Exception:  # a dead watch would freeze the state until it expires
                logger.exception("Device state poll failed; going on.")
            self._stopping.wait(min(self.interval_sec, 1.0))


class HoldJobs(Middleware):
    """No job message starts while the node is paused or its device is not ready; held ones wait.

    Add it before dramatiq's ``TimeLimit``, so the wait is not counted as the job's run.
    """

    def __init__(self, book: PauseBook, watch: DeviceWatch | None = None) -> None:
        self.book = book
        self.watch = watch
        self.stopping = threading.Event()
        self._held_reason: str | None = None
        self._log_lock = threading.Lock()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        only = worker.consumer_whitelist
        if self.watch is not None and (not only or JOBS_QUEUE in only):
            self.watch.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.stopping.set()
        if self.watch is not None:
            self.watch.stop()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.queue_name != JOBS_QUEUE:
            return
        if self.watch is not None:
            self._poll_device(always=True)  # between jobs: the device's word just before one starts
        while True:
            reason = self._reason()
            if reason is None:
                self._note(None)
                return
            self._note(reason)
            if self.stopping.is_set():
                # stopping while held: the message goes back to its queue for the next worker
                broker.enqueue(message.copy())
                raise SkipMessage()
            self.stopping.wait(HOLD_POLL_SEC)
            if self.watch is not None:
                self._poll_device(always=False)

    def _poll_device(self, *, always: bool) -> None:
        assert self.watch is not None
        try:
            self.watch.poll() if always else self.watch.poll_if_due()
        except redis.RedisError as exc:
            logger.warning("Device state not recorded: the broker Redis does not answer (%s).", exc)

    def _reason(self) -> str | None:
        try:
            hold: NodeHold = self.book.hold()
        except redis.RedisError as exc:
            # no job can be claimed without the broker either: wait for it rather than guess
            return f"the broker Redis does not answer ({exc})"
        return hold.reason

    def _note(self, reason: str | None) -> None:
        """Log each change of hold once per process, not once per held message."""
        with self._log_lock:
            if reason == self._held_reason:
                return
            previous, self._held_reason = self._held_reason, reason
        if reason is not None:
            logger.info("Jobs held: %s.", reason)
        elif previous is not None:
            logger.info("Jobs start again (no longer held: %s).", previous)
