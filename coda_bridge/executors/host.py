"""The executor of one worker process: resolved once, and the threads and slots its runs take.

Runs happen on daemon threads so the actor thread can watch the cancel key
and the time limit; a run that was abandoned keeps its slot until it
really ends, so an abandoned run that still holds the device keeps the
next one waiting instead of running beside it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import cached_property
from typing import Any

from ..broker.shared_state import NodeState
from ..settings import Settings

__all__ = ["DaemonThreads", "ExecutorHost"]

logger = logging.getLogger(__name__)

#: Executor threads beyond the concurrency, for runs that were abandoned but have not ended.
EXECUTOR_SPARE_THREADS = 4


class DaemonThreads:
    """A fixed set of daemon threads running submitted calls.

    Unlike ``ThreadPoolExecutor``, whose threads are joined at exit, a hung
    executor call here never keeps a stopping worker process alive.
    """

    def __init__(self, size: int, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[None], Callable[[], None]]] = queue.SimpleQueue()
        for index in range(size):
            threading.Thread(target=self._serve, name=f"{name}-{index}", daemon=True).start()

    def submit(self, call: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._calls.put((future, call))
        return future

    def _serve(self) -> None:
        while True:
            future, call = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                call()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)


class ExecutorHost:
    """Resolves the executor on first use (PROTOCOL.md 4.4) and tells the node what it can do."""

    def __init__(self, settings: Settings, state: NodeState) -> None:
        self.settings = settings
        self.state = state
        self._lock = threading.Lock()
        self._executor: Any = None
        self.origin: str | None = None
        #: Runs on the device at once (an abandoned run keeps its slot until it really ends).
        self.run_slots = threading.BoundedSemaphore(settings.executor_concurrency)

    @cached_property
    def run_pool(self) -> DaemonThreads:
        """Threads that call the executor; spares so abandoned runs never starve new ones."""
        return DaemonThreads(self.settings.executor_concurrency + EXECUTOR_SPARE_THREADS, "coda-executor")

    def executor(self) -> Any:
        """The executor, resolved once; a :class:`~coda_bridge.errors.CodaError` when it cannot be built."""
        with self._lock:
            if self._executor is None:
                from .base import has_batch
                from .resolve import resolve_executor

                self._executor, self.origin = resolve_executor(self.settings)
                logger.info("Executor: %s.", self.origin)
                self.state.set_executor_batch(has_batch(self._executor) and self.settings.batch_size > 1)
                self._record_connectivity(self._executor)
            return self._executor

    def _record_connectivity(self, executor: Any) -> None:
        """Coupling edges the executor reports (``connectivity``: a list or a method) go to shared state."""
        edges = getattr(executor, "connectivity", None)
        try:
            edges = edges() if callable(edges) else edges
            if edges is not None:
                self.state.set_connectivity([[int(a), int(b)] for a, b in edges])
        except (TypeError, ValueError) as exc:
            logger.warning("Executor connectivity ignored: %s", exc)
