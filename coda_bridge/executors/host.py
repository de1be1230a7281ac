"""The executor of one worker process: resolved once, and the child processes its runs take.

Runs happen in child processes (:mod:`~coda_bridge.executors.isolation`)
so the actor thread can watch the cancel key and the time limit, and a
crash or a run that cannot be stopped costs a child, never the worker; a
run that was abandoned keeps its slot until its child answered or was
killed, so it never runs beside the next one.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from functools import cached_property
from typing import Any

import redis

from ..errors import CodaError
from ..logs import mask
from ..queueing.outage import broker_unavailable
from ..settings import Settings
from ..state.node_state import NodeState
from .base import cancel, has_batch, start_batch_run, start_run
from .first_runtime import adapt_executor
from .isolation import ExecutorProcesses
from .resolve import resolve_executor

__all__ = ["ExecutorHost", "executor_version", "reported_edges"]

logger = logging.getLogger(__name__)

#: Longest build-failure text kept in the shared state (the cloud's own error limit).
FAILURE_MAX_CHARS = 500


class ExecutorHost:
    """Resolves the executor on first use (PROTOCOL.md 4.4) and tells the node what it can do."""

    def __init__(self, settings: Settings, state: NodeState) -> None:
        self.settings = settings
        self.state = state
        self._lock = threading.Lock()
        self._executor: Any = None
        self._noted = False
        self.origin: str | None = None
        #: The executor's version where it says one (a job's timeline shows it).
        self.version: str | None = None

    @cached_property
    def processes(self) -> ExecutorProcesses:
        """The children that run the executor: ``executor_concurrency`` runs on the device at once."""
        calls: dict[str, Callable[..., Any]] = {"run": start_run, "batch_run": start_batch_run}
        return ExecutorProcesses(self.executor, calls, cancel, self.settings.executor_concurrency)

    def executor(self) -> Any:
        """The executor, resolved once; a :class:`~coda_bridge.errors.CodaError` when it cannot be built.

        A failure is recorded in the shared state (``/ready`` and ``doctor`` name it)
        until a build succeeds; what a built one can do is recorded there too, once
        the broker answers.
        """
        with self._lock:
            if self._executor is None:
                try:
                    built, origin = resolve_executor(self.settings)
                    built, origin = adapt_executor(built, origin, self.settings.executor_ir)
                except CodaError as exc:
                    self._note_failure(exc)
                    raise
                self._executor, self.origin = built, origin
                self.version = executor_version(built)
                logger.info("Executor: %s.", self.origin)
            if not self._noted:
                self._note_built(self._executor)
            return self._executor

    def _note_built(self, built: Any) -> None:
        """Clear the failure record, note batching and the coupling edges; a broker that is down is
        one WARNING line, and the next call notes them again."""
        try:
            self.state.clear_executor_failure()
            self.state.set_executor_batch(has_batch(built) and self.settings.batch_size > 1)
            self._record_connectivity(built)
        except redis.RedisError as exc:
            logger.warning("Executor built but not recorded: %s", broker_unavailable(self.state.client, exc))
            return
        self._noted = True

    def _note_failure(self, exc: CodaError) -> None:
        """Put the build failure in the shared state; a Redis outage only loses the note, never the error."""
        try:
            text = mask(" ".join(str(exc).split()))
            self.state.set_executor_failure(text[:FAILURE_MAX_CHARS])
        except redis.RedisError as note_error:
            logger.warning("Executor build failure not recorded in the broker (%s).", note_error)

    def _record_connectivity(self, executor: Any) -> None:
        """The executor's coupling edges go to shared state, where the bridge and heartbeats read them."""
        self.state.set_connectivity(reported_edges(executor))


#: The longest executor version kept.
VERSION_MAX_CHARS = 40


def executor_version(executor: Any) -> str | None:
    """The executor's ``version`` (or ``__version__``), else its top package's ``__version__``; ``None``.

    Read once, when the executor is built; an attribute that raises reads as no version.
    """
    try:
        package = sys.modules.get(type(executor).__module__.partition(".")[0])
        for value in (
            getattr(executor, "version", None),
            getattr(executor, "__version__", None),
            getattr(package, "__version__", None),
        ):
            if isinstance(value, str) and value.strip():
                return mask(" ".join(value.split()))[:VERSION_MAX_CHARS]
    except Exception:  # the backend's own code: no version rather than no executor
        return None
    return None


def _edges_of(holder: Any, name: str) -> list[list[int]] | None:
    """``holder.name`` (a list, or a method giving one) as ``[[a, b], ...]``; ``None`` if absent or empty."""
    try:
        edges = getattr(holder, name, None)
        edges = edges() if callable(edges) else edges
        if not edges:
            return None
        return [[int(a), int(b)] for a, b in edges]
    except Exception as exc:  # a backend's own property failing must not stop the executor being used
        logger.warning("Executor %s ignored: %s: %s", name, type(exc).__name__, exc)
        return None


def reported_edges(executor: Any) -> list[list[int]] | None:
    """Coupling edges from ``executor.connectivity``, else ``executor.device.directed_edges``, else its
    ``logical_edges`` (what the first runtime's backends offer); ``None`` when none gives any."""
    edges = _edges_of(executor, "connectivity")
    if edges is not None:
        return edges
    try:
        device = getattr(executor, "device", None)
    except Exception as exc:  # a failing property, as above
        logger.warning("Executor device ignored: %s: %s", type(exc).__name__, exc)
        return None
    if device is None:
        return None
    return _edges_of(device, "directed_edges") or _edges_of(device, "logical_edges")
