"""What a process of the node holds once: settings, identity, clients and shared state.

Bridge, worker and web processes each build one :class:`Runtime`; it parses
the signing key once, keeps one pooled HTTP session and one client per
Redis, and creates the executor lazily (only executor workers need it).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import cached_property
from types import FrameType
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .broker.shared_state import NodeState
from .cloud.client import CloudClient
from .cloud.signing import Signer
from .errors import ConfigError
from .identity.connect import load_node_settings, node_signer
from .settings import Settings

__all__ = ["Runtime", "cloud_redis_client", "wait_for_identity"]

logger = logging.getLogger(__name__)

#: Socket timeout of ordinary commands to either Redis.
REDIS_SOCKET_TIMEOUT_SEC = 5.0
#: Executor threads beyond the concurrency, for runs that were abandoned but have not ended.
EXECUTOR_SPARE_THREADS = 4
#: How often a process waiting for the bridge to provision looks again.
IDENTITY_POLL_SEC = 1.0


def cloud_redis_client(url: str, *, block_sec: float = 0.0) -> redis.Redis:
    """A client for the cloud's Redis that rides out short blips (3 retries with backoff)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors="replace",  # a stray non-UTF-8 entry becomes a failed job, not a dead bridge
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SEC,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SEC + block_sec,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def wait_for_identity(
    *, overrides: dict[str, Any] | None = None, timeout_sec: float | None = None
) -> Settings:
    """Settings with an identity, waiting for the bridge to provision the node when it has not yet.

    Workers and the web app may start before the bridge has connected for
    the first time (``honcho start``); they wait rather than exit.
    """
    deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
    with _exit_on_sigterm():
        return _poll_identity(overrides, deadline)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """While waiting, SIGTERM exits at once (a dramatiq worker's own handler only sets a flag)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _poll_identity(overrides: dict[str, Any] | None, deadline: float | None) -> Settings:
    announced = False
    while True:
        settings = load_node_settings(overrides=overrides)
        if settings.qpu_id and settings.jwt_key_id and settings.jwt_private_key_value:
            return settings
        if deadline is not None and time.monotonic() > deadline:
            raise ConfigError(
                f"no node identity in {settings.state_dir}: start the bridge with a node token first"
            )
        if not announced:
            logger.info("Waiting for the bridge to provision the node (state in %s).", settings.state_dir)
            announced = True
        time.sleep(IDENTITY_POLL_SEC)


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


class Runtime:
    """Per-process handles on everything a node process talks to."""

    def __init__(self, settings: Settings) -> None:
        if not settings.qpu_id:
            raise ConfigError("qpu_id is not known yet: the node has not connected to the cloud")
        self.settings = settings
        self.qpu_id: str = settings.qpu_id
        self._lock = threading.Lock()
        self._executor: Any = None
        #: Runs on the device at once (an abandoned run keeps its slot until it really ends).
        self.run_slots = threading.BoundedSemaphore(settings.executor_concurrency)
        self.executor_origin: str | None = None

    @cached_property
    def run_pool(self) -> DaemonThreads:
        """Threads that call the executor; spares so abandoned runs never starve new ones."""
        return DaemonThreads(self.settings.executor_concurrency + EXECUTOR_SPARE_THREADS, "coda-executor")

    @cached_property
    def signer(self) -> Signer:
        return node_signer(self.settings)

    @cached_property
    def cloud(self) -> CloudClient:
        return CloudClient(self.settings)

    @cached_property
    def local_redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.broker_url,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SEC,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SEC,
        )

    @cached_property
    def cloud_redis(self) -> redis.Redis:
        if not self.settings.redis_url:
            raise ConfigError("redis_url is not known: the cloud bundle did not name the job Redis")
        return cloud_redis_client(self.settings.redis_url)

    @cached_property
    def state(self) -> NodeState:
        return NodeState(self.local_redis, self.qpu_id)

    def executor(self) -> Any:
        """The executor of this process, resolved once (PROTOCOL.md 4.4)."""
        with self._lock:
            if self._executor is None:
                from .executors.base import has_batch
                from .executors.resolve import resolve_executor

                self._executor, self.executor_origin = resolve_executor(self.settings)
                logger.info("Executor: %s.", self.executor_origin)
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

    def close(self) -> None:
        for name in ("cloud", "local_redis", "cloud_redis"):
            handle = self.__dict__.pop(name, None)
            if handle is not None:
                handle.close()
