"""``coda-bridge start --one-process``: the whole node in threads of one process, for a small lab PC.

The same parts as ``start``, on the same broker and actors: the bridge and
the control ticker (:class:`~coda_bridge.pipeline.bridge.BridgeProcess`, in a
thread), the three queues' dramatiq workers (dramatiq's own :class:`dramatiq.Worker`,
on the broker ``import actors`` builds from the settings, as the worker
processes do), and the probes app under waitress.  The guarantees are the
same: the first SIGTERM drains by the same plan as ``start``
(:data:`~coda_bridge.ops.drain.DRAIN_PLAN`: the bridge stops reading and the
executor finishes its jobs, then, once their results are picked up,
delivery, control and probes stop), bounded by
``shutdown_drain_timeout_sec``; a second signal, or a kill -9, ends the
process at once and loses nothing (the cloud's stream is the ledger, and
the bridge reconciles it at the next start).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import CodaError, ConfigError
from ..logs import configure_logging, json_logging
from ..pipeline.bridge import BridgeProcess
from ..settings import Settings
from .drain import DRAIN_PLAN, ResultsFlushed, drain_stage, results_key_template
from .exits import EX_CONFIG, FORCED_EXIT
from .jsonlines import JsonLinesStream
from .process_list import CONTROL_THREADS, PREPARED_AHEAD, RESULT_THREADS
from .runners import QueueWorkers, StopSignal, connect_or_exit
from .webentry import registered

__all__ = ["WEB_THREADS", "run_one_process"]

logger = logging.getLogger("coda_bridge.ops.oneprocess")

#: Threads of the probes server (a /ready waiting on its checks never holds up /health).
WEB_THREADS = 4
#: The ``part`` of this process's raw lines in JSON logs (the whole node is one process).
ONE_PROCESS_PART = "node"
#: Time past the drain timeout before the process ends with whatever still runs.
KILL_MARGIN_SEC = 10.0
#: How often the drain looks whether the results of drained jobs were picked up.
FLUSH_POLL_SEC = 0.05


def _preload() -> None:
    """Import what the parts need while the bridge connects (imports are most of a start)."""
    import dramatiq  # noqa: F401, PLC0415 - loaded in the preload thread, while the bridge connects
    import waitress  # noqa: F401, PLC0415 - loaded in the preload thread, while the bridge connects

    from ..pipeline import delivery, execute, intake  # noqa: F401, PLC0415 - loaded in the preload thread, while the bridge connects
    from ..web import probes_app as app  # noqa: F401, PLC0415 - loaded in the preload thread, while the bridge connects


def _export(host: str | None, port: int | None, site: str | None) -> None:
    """The CLI's overrides, in the environment the node's child processes inherit."""
    os.environ.pop("CODA_NODE_TOKEN", None)  # the token goes to the connect only
    if host:
        os.environ["CODA_HOST"] = host
    if port:
        os.environ["CODA_PORT"] = str(port)
    if site:
        os.environ["CODA_ENV"] = site


def run_one_process(
    settings: Settings,
    *,
    token: str | None,
    host: str | None = None,
    port: int | None = None,
    site: str | None = None,
) -> int:
    """Run every part of the node in this process until stopped; the exit status."""
    configure_logging(settings.log_level, settings.log_format)
    if json_logging(settings.log_format):  # the handlers keep the real streams; raw writes become JSON
        sys.stdout = JsonLinesStream(ONE_PROCESS_PART, sys.__stdout__ or sys.stdout)
        sys.stderr = JsonLinesStream(ONE_PROCESS_PART, sys.__stderr__ or sys.stderr)
    _export(host, port, site)
    stop = StopSignal().install()
    preload = threading.Thread(target=_preload, name="coda-preload", daemon=True)
    preload.start()
    settings = connect_or_exit(settings, token=token)
    preload.join()
    import actors  # noqa: PLC0415 - after the connect; the preload thread loaded its modules meanwhile

    # in the terminal's process group, so a Ctrl-C reaches every part; on the connected settings
    actors.boot(actors.broker, actors.node, settings=settings, isolate=False)
    return _Node(settings, actors.broker).run(stop)


class _Node:
    def __init__(self, settings: Settings, broker: Any) -> None:
        self.settings = settings
        self.broker = broker
        self.drain_timeout_sec = settings.shutdown_drain_timeout_sec
        self.groups = {
            "jobs": QueueWorkers(broker, "jobs", settings.executor_concurrency + PREPARED_AHEAD),
            "results": QueueWorkers(broker, "results", RESULT_THREADS, settings.result_processes),
            "control": QueueWorkers(broker, "control", CONTROL_THREADS),
        }
        self.results_flushed = ResultsFlushed(results_key_template(), settings.qpu_id, client=broker.client)
        self.bridge_failed: BaseException | None = None

    def _web(self) -> tuple[Any, threading.Thread]:
        from waitress import create_server  # noqa: PLC0415 - start-up: the preload thread loads it while the bridge connects

        from ..web.probes_app import check_dashboard, create_app  # noqa: PLC0415 - start-up: the preload thread loads it while the bridge connects

        check_dashboard(self.settings)
        app = create_app(self.settings)
        server: Any = create_server(
            app, host=self.settings.host, port=self.settings.port, threads=WEB_THREADS
        )
        self.web_registration = registered(app)  # `status` lists the web role of this process too
        thread = threading.Thread(target=server.run, name="coda-probes", daemon=True)
        return server, thread

    def run(self, stop: StopSignal) -> int:
        try:
            server, web = self._web()
        except ConfigError as exc:
            logger.error("%s", exc)
            return EX_CONFIG
        started: list[QueueWorkers] = []
        try:
            for group in self.groups.values():
                group.start()  # jobs first: an executor that cannot be built ends the start with 78
                started.append(group)
        except SystemExit as exc:
            _stop_together([group.stop for group in started], 0)
            server.close()
            return int(exc.code) if isinstance(exc.code, int) else 1
        try:
            bridge = BridgeProcess(self.settings, self.broker).register()
        except CodaError as exc:  # another bridge holds this QPU and consumer name (78), or no broker
            (logger.error if isinstance(exc, ConfigError) else logger.warning)("%s", exc)
            _stop_together([group.stop for group in started], 0)
            server.close()
            return EX_CONFIG if isinstance(exc, ConfigError) else 1
        reader = threading.Thread(
            target=self._run_bridge, args=(bridge,), name="coda-bridge-stream", daemon=True
        )
        reader.start()
        web.start()
        stop.running()
        logger.info(
            "coda-bridge running in one process (pid %d): bridge, jobs, results, control, probes on %s:%d.",
            os.getpid(),
            self.settings.host,
            self.settings.port,
        )
        healthy = stop.wait(lambda: reader.is_alive() and web.is_alive())
        reason = f"{stop.received} received" if healthy else "a part of the node stopped on an error"
        self._drain(reason, self._parts(bridge, reader, server))
        return 0 if healthy and self.bridge_failed is None else 1

    def _run_bridge(self, bridge: BridgeProcess) -> None:
        try:
            bridge.run()
        except BaseException as exc:  # the process reports it and exits non-zero
            self.bridge_failed = exc
            logger.exception("The bridge stopped on an error.")

    def _parts(self, bridge: BridgeProcess, reader: threading.Thread, server: Any) -> dict[str, _Stop]:
        """How each part stops, within a time in milliseconds: the names of :data:`DRAIN_PLAN`."""

        def stop_bridge(timeout_ms: int) -> None:
            bridge.stop()
            reader.join(timeout_ms / 1000)
            if reader.is_alive():
                logger.info("The bridge's read outlived the drain; what it held stays pending in the stream.")

        return {
            "bridge": stop_bridge,
            **{name: group.stop for name, group in self.groups.items()},
            "web": lambda timeout_ms: self._stop_web(server),
        }

    def _stop_web(self, server: Any) -> None:
        server.close()
        self.web_registration.stop()

    def _drain(self, reason: str, parts: dict[str, _Stop]) -> None:
        """Stop ``parts`` stage by stage (:data:`DRAIN_PLAN`), all within the drain timeout."""
        started = time.monotonic()
        deadline = started + self.drain_timeout_sec
        watchdog = threading.Timer(self.drain_timeout_sec + KILL_MARGIN_SEC, self._give_up)
        watchdog.daemon = True
        watchdog.start()
        logger.info("%s; draining (up to %g s).", reason, self.drain_timeout_sec)
        for index, stage in enumerate(DRAIN_PLAN):
            if stage.after_results_flushed:
                while not self.results_flushed() and time.monotonic() < deadline:
                    time.sleep(FLUSH_POLL_SEC)
            names = [name for name in parts if drain_stage(name) == index]
            remaining_ms = max(int((deadline - time.monotonic()) * 1000), 0)
            _stop_together([parts[name] for name in names], remaining_ms)
            logger.info("%s stopped after %.2f s.", ", ".join(names), time.monotonic() - started)
        watchdog.cancel()
        logger.info("all parts stopped after %.2f s.", time.monotonic() - started)

    def _give_up(self) -> None:
        limit = self.drain_timeout_sec + KILL_MARGIN_SEC
        logger.error("The drain took longer than %g s; exiting now.", limit)
        os._exit(FORCED_EXIT)


#: How a part of the one process stops, given the milliseconds it may take.
_Stop = Callable[[int], None]


def _stop_together(stops: list[_Stop], timeout_ms: int) -> None:
    """Run every stop at once (each within ``timeout_ms``), and wait for them all."""
    threads = [
        threading.Thread(target=stop, args=(timeout_ms,), name=f"stop-{index}")
        for index, stop in enumerate(stops)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
