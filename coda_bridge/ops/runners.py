"""The parts of a node, run inside the current process: the stream bridge and dramatiq workers.

``coda-bridge start`` runs each part as one process of this module
(``python -m coda_bridge.ops.runners bridge`` or ``... worker --queues jobs``), and
``start --one-process`` runs all of them in threads of one process.  A
worker is dramatiq's own :class:`dramatiq.Worker` on the broker and actors
that ``import actors`` builds, as under the ``dramatiq`` command, without
its master process: one process per queue instead of two.

Two things make these parts start and stop fast:

- a worker started with ``--connected-since T`` imports everything first
  and only then waits for this start's bridge to connect (the bundle it
  loads is the fresh one), so imports overlap the bridge's connect;
- idle dramatiq threads look at their stop flag every :data:`WORKER_POLL_MS`.

Every process of the node stops the same way (:class:`StopSignal`): the
first SIGTERM drains (the bridge, :class:`~coda_bridge.pipeline.bridge.BridgeProcess`,
ends after its current read), a second one ends the process at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import AuthError, ClockRefused, CodaError, ConfigError, NodeError
from ..lean_imports import import_dynaconf_without_flask
from ..logs import configure_logging, mask
from ..trust import python_argv
from .exits import EX_CONFIG, FORCED_EXIT
from .logfile import hangup_reopen

if TYPE_CHECKING:  # start-up: each part's process loads only what it runs
    from ..settings import Settings

__all__ = [
    "WORKER_POLL_MS",
    "QueueWorkers",
    "StopSignal",
    "main",
    "run_bridge_main",
    "wait_connected",
]

logger = logging.getLogger("coda_bridge.ops.runners")

#: How long an idle dramatiq worker or consumer thread waits before it looks at its stop flag again.
#: A stop waits about twice this; an idle consumer polls Redis about this often (idle CPU of the three
#: worker processes, measured: 100 ms 2.3 %, 250 ms 1.7 %, dramatiq's 1000 ms 0.65 % of a core,
#: but then a stop lasts 2 s).
WORKER_POLL_MS = 200
#: How often a waiting part looks whether this start's bridge has connected.
CONNECT_POLL_SEC = 0.05
#: How often a main thread waiting for a stop looks at its threads.
WAIT_STEP_SEC = 0.2
#: What a worker process logs once it consumes (the ``dramatiq`` command's own line).
READY_LINE = "Worker process is ready for action."


class StopSignal:
    """The first SIGTERM/SIGINT asks for a drain; a second one ends the process at once.

    Before :meth:`running` is called (still connecting or booting), the
    first signal ends the process at once too: nothing has been taken yet.
    SIGHUP is logrotate's: it reopens the log (:func:`.logfile.hangup_reopen`)
    and never stops the process, unless its output is a terminal, which hung up.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._running = False
        self._on_stop: list[Callable[[], None]] = []

    def install(self) -> StopSignal:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        return self

    def running(self, on_stop: Callable[[], None] | None = None) -> None:
        """From now on a first signal drains; ``on_stop`` is called with it (it must not block)."""
        if on_stop is not None:
            self._on_stop.append(on_stop)
        self._running = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP and not os.isatty(1):
            # off the signal handler: the main thread may be inside a log handler's lock
            threading.Thread(target=_reopen_after_hangup, name="coda-hangup", daemon=True).start()
            return
        if self.event.is_set():
            logger.warning("Second signal (%s); exiting now.", name)
            os._exit(FORCED_EXIT)
        self.received = name
        self.event.set()
        if not self._running:
            logger.info("%s received while starting; exiting.", name)
            raise SystemExit(0)
        for on_stop in self._on_stop:
            on_stop()

    def wait(self, alive: Callable[[], bool] = lambda: True) -> bool:
        """Block until a stop is asked (True) or ``alive()`` turns false (False)."""
        while not self.event.wait(WAIT_STEP_SEC):
            if not alive():
                return False
        return True


def _reopen_after_hangup() -> None:
    logger.info("%s", hangup_reopen())


def wait_connected(since: float, stop: threading.Event) -> bool:
    """Wait until a connect finished at or after ``since`` (this start's bridge); False if stopped first."""
    from ..identity.connect import load_node_settings  # noqa: PLC0415 - start-up: each part's process loads only what it runs
    from ..identity.credentials import StatePaths, connected_since  # noqa: PLC0415 - start-up: each part's process loads only what it runs

    paths = StatePaths(load_node_settings().state_dir)
    announced = False
    while not stop.is_set():
        if connected_since(paths, since):
            return True
        if not announced:
            logger.info("Waiting for the bridge to connect.")
            announced = True
        stop.wait(CONNECT_POLL_SEC)
    return False


class _SeveralWorkers(logging.Filter):
    """Drop dramatiq's warning that a second Worker on one broker adds its middleware "twice".

    Each Worker registers its own ``_WorkerMiddleware`` (it feeds that Worker's
    consumers); several Workers in one process are meant here, not a mistake.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "_WorkerMiddleware" not in record.getMessage()


class QueueWorkers:
    """dramatiq Workers of one queue in this process: ``consumers`` of them with ``threads`` each."""

    def __init__(self, broker: Any, queue: str, threads: int, consumers: int = 1) -> None:
        import dramatiq  # noqa: PLC0415 - start-up: each part's process loads only what it runs

        broker.logger.addFilter(_SEVERAL_WORKERS)
        self.queue = queue
        self.workers = [
            dramatiq.Worker(broker, queues={queue}, worker_threads=threads, worker_timeout=WORKER_POLL_MS)
            for _ in range(consumers)
        ]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout_ms: int) -> None:
        stop_all([self], timeout_ms)


_SEVERAL_WORKERS = _SeveralWorkers()


def stop_all(groups: Iterable[QueueWorkers], timeout_ms: int) -> None:
    """Stop every Worker of ``groups`` at once (each finishes its messages within ``timeout_ms``)."""
    threads = [
        threading.Thread(target=worker.stop, kwargs={"timeout": timeout_ms}, name=f"stop-{group.queue}")
        for group in groups
        for worker in group.workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def connect_or_exit(settings: Settings, token: str | None = None) -> Settings:
    """Connect as ``coda-bridge bridge`` does; a refused token or a bad setting ends the process with 78.

    ``settings`` are the ones the process entry loaded (once per process start).
    """
    from ..pipeline.bridge import connect  # noqa: PLC0415 - start-up: each part's process loads only what it runs

    try:
        settings.check_redis_urls()  # before a one-time token is spent
        return connect(settings, token=token)
    except (ConfigError, AuthError) as exc:
        _fatal(exc)
    except NodeError as exc:
        # a token refused for its time is the clock's fault, not the identity's: a restart retries it
        if exc.status is not None and 400 <= exc.status < 500 and not isinstance(exc, ClockRefused):
            _fatal(exc)
        raise


def _fatal(exc: BaseException) -> NoReturn:
    print(f"error: {mask(str(exc))}", file=sys.stderr, flush=True)
    raise SystemExit(EX_CONFIG)


def _preload() -> None:
    """Import what the actors import, before waiting for the bridge: the imports overlap its connect."""
    import dramatiq  # noqa: F401, PLC0415 - the preload: imports overlap the bridge's connect

    from ..pipeline import delivery, execute  # noqa: F401, PLC0415 - the preload: imports overlap the bridge's connect


def run_bridge_main(settings: Settings, token: str | None, stop: StopSignal) -> None:
    """The bridge's run under ``stop``: connect, then read until the first signal (its read ends first).

    ``settings`` are the ones the process entry loaded (once per process start).

    ``coda-bridge bridge`` and ``start``'s bridge process both run this;
    ``start --one-process`` runs the same :class:`~coda_bridge.pipeline.bridge.BridgeProcess`.
    """
    from ..pipeline.bridge import BridgeProcess, run_bridge  # noqa: PLC0415 - start-up: each part's process loads only what it runs

    def started(process: BridgeProcess) -> None:
        configure_logging(process.settings.log_level)

        def on_stop() -> None:
            logger.info("Bridge received %s; stopping after the current read.", stop.received)
            process.stop()

        stop.running(on_stop=on_stop)

    run_bridge(settings, token=token, on_start=started)


def run_bridge_process() -> int:
    """``python -m coda_bridge.ops.runners bridge``: connect, then read the stream until SIGTERM."""
    from ..identity.connect import load_node_settings  # noqa: PLC0415 - start-up: each part's process loads only what it runs

    configure_logging()
    stop = StopSignal().install()
    token = os.environ.pop("CODA_NODE_TOKEN", None) or None
    try:
        settings = load_node_settings()  # the one load of this process start
        settings.check_redis_urls()  # before a one-time token is spent
        run_bridge_main(settings, token, stop)
    except (ConfigError, AuthError) as exc:  # a bad setting, a refused token, another bridge on this QPU
        _fatal(exc)
    except NodeError as exc:
        if exc.status is None or not 400 <= exc.status < 500:
            raise
        _fatal(exc)
    except CodaError:  # an expected condition (the broker does not answer): main says it in one line
        raise
    except Exception:  # the process reports it and exits non-zero
        logger.exception("The bridge stopped on an error.")
        return _exit_now(1)
    return _exit_now(0)


def run_worker_process(queue: str, threads: int, consumers: int, drain_ms: int, since: float | None) -> int:
    """``python -m coda_bridge.ops.runners worker --queues Q``: Workers of one queue until SIGTERM."""
    configure_logging()
    stop = StopSignal().install()
    _preload()
    if since is not None and not wait_connected(since, stop.event):
        return 0
    import actors  # noqa: PLC0415 - start-up: each part's process loads only what it runs

    # without leaving the process group: these processes already have one of their own
    actors.boot(actors.broker, actors.node, isolate=False)
    group = QueueWorkers(actors.broker, queue, threads, consumers)
    group.start()  # the executor's BuildAtBoot may end the process here with EX_CONFIG
    stop.running()
    if stop.event.is_set():  # a signal that came while booting
        group.stop(drain_ms)
        return 0
    logger.info(READY_LINE)
    stop.wait()
    logger.info("%s received; draining the %s queue (up to %d ms).", stop.received, queue, drain_ms)
    group.stop(drain_ms)
    actors.broker.close()
    return _exit_now(0)


def _exit_now(code: int) -> int:
    """End the process without the interpreter's teardown (everything is stopped and closed by now)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker_argv(
    queue: str, threads: int, *, consumers: int = 1, drain_ms: int, since: float | None, python: str
) -> tuple[str, ...]:
    """The command line of one worker process of ``start``."""
    # ``--queues``, as on the dramatiq command line: ``actors`` reads its role from it
    argv = [*python_argv(python, "-m", "coda_bridge.ops.runners"), "worker", "--queues", queue]
    argv += ["--threads", str(threads)]
    argv += ["--consumers", str(consumers), "--drain-ms", str(drain_ms)]
    if since is not None:
        argv += ["--connected-since", f"{since:.6f}"]
    return tuple(argv)


def main(args: Sequence[str] | None = None) -> int:
    import_dynaconf_without_flask()
    parser = argparse.ArgumentParser(prog="python -m coda_bridge.ops.runners")
    parts = parser.add_subparsers(dest="part", required=True)
    parts.add_parser("bridge", help="the stream bridge (a token comes in CODA_NODE_TOKEN, never argv)")
    worker = parts.add_parser("worker", help="dramatiq Workers of one queue")
    worker.add_argument("--queues", dest="queue", required=True, help="jobs, results or control")
    worker.add_argument("--threads", type=int, default=1)
    worker.add_argument("--consumers", type=int, default=1)
    worker.add_argument("--drain-ms", type=int, default=30_000)
    worker.add_argument("--connected-since", type=float, default=None)
    values = parser.parse_args(args)
    try:
        if values.part == "bridge":
            return run_bridge_process()
        started = time.monotonic()
        code = run_worker_process(
            values.queue, values.threads, values.consumers, values.drain_ms, values.connected_since
        )
    except CodaError as exc:  # an expected condition (the broker or the cloud does not answer): one line
        logger.warning("%s", _what_to_do(exc), exc_info=logger.isEnabledFor(logging.DEBUG))  # CODA_LOG_LEVEL
        return 1
    logger.debug("worker ran %.1f s", time.monotonic() - started)
    return code


def _what_to_do(exc: CodaError) -> str:
    """The error's one line, with what to do when the error does not already say it."""
    text = mask(" ".join(str(exc).split()))
    if isinstance(exc, NodeError):  # a 5xx or no answer at connect (a 4xx ended the process with 78)
        return f"{text}; this part restarts and connects again (check the network and CODA_WEBAPP_URL)"
    return text


if __name__ == "__main__":
    sys.exit(main())
