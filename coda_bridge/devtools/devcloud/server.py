"""Run the simulator as a real HTTP server.

:func:`serve` is what ``python -m coda_bridge.devtools.devcloud`` runs: waitress
(a pool of request threads, HTTP/1.1 keep-alive), one ``listening on
http://host:port`` line on stdout.  :mod:`.launcher` starts that command
as a subprocess.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any

from waitress import create_server
from waitress.task import ThreadedTaskDispatcher

from .app_factory import DEFAULT_API_PREFIX, create_app
from .store import OFFLINE_AFTER_SEC, Store

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "REQUIRED_HEADERS_VARIABLE", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: The variable holding ``--required-headers`` (a JSON object), so header values stay out of argv.
REQUIRED_HEADERS_VARIABLE = "CODA_DEVCLOUD_REQUIRED_HEADERS"
#: How long a stop waits for the state saver's last round.
SAVER_STOP_SEC = 5.0
#: How often the state file is rewritten when something changed.
STATE_SAVE_INTERVAL_SEC = 1.0
#: Request threads.  A delay fault holds its thread for ``delay_sec``: 32 lets
#: every delivery and control thread of a few nodes (8 + 2 each) sit in one
#: while the admin API and the rest still answer.
SERVER_THREADS = 32
#: Open connections before the server stops accepting; idle keep-alive ones count.
CONNECTION_LIMIT = 500
#: An idle keep-alive connection is closed after this long.
CHANNEL_TIMEOUT_SEC = 60
#: On SIGTERM, how long requests still running (a delay fault) may hold up the
#: exit; waitress's own 5 s would meet :meth:`.launcher.DevCloudProcess.stop`'s SIGKILL.
SHUTDOWN_GRACE_SEC = 1.0


class _StateSaver:
    """Rewrites the state file in the background whenever the store changed."""

    def __init__(self, store: Store, path: str) -> None:
        self._store = store
        self._path = path
        self._saved = store.changes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devcloud-state-saver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(STATE_SAVE_INTERVAL_SEC):
            self.save_if_changed()

    def save_if_changed(self) -> None:
        changes = self._store.changes
        if changes != self._saved:
            self._store.save(self._path)
            self._saved = changes

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SAVER_STOP_SEC)
        self.save_if_changed()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raised in the main thread, inside waitress's loop: ``run()`` catches it,
    # stops the request threads and returns, so ``serve`` ends normally.
    raise SystemExit(0)


class _TaskDispatcher(ThreadedTaskDispatcher):
    """Waitress's request threads, waiting at most ``SHUTDOWN_GRACE_SEC`` for running requests on exit."""

    def shutdown(self, cancel_pending: bool = True, timeout: float = SHUTDOWN_GRACE_SEC) -> bool:
        return bool(super().shutdown(cancel_pending, min(timeout, SHUTDOWN_GRACE_SEC)))


_StartResponse = Callable[..., Any]
_WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


def _access_logged(app: _WsgiApp) -> _WsgiApp:
    """``app``, logging ``client METHOD path status`` for each request (waitress logs none)."""
    access = logging.getLogger("coda_bridge.devtools.devcloud.access")
    access.setLevel(logging.INFO)
    if not access.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)

    def logged(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        def logging_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
            code = status.split(" ", 1)[0]
            access.info("%s %s %s %s", environ.get("REMOTE_ADDR", "-"), environ["REQUEST_METHOD"], path, code)
            return start_response(status, headers, exc_info)

        return app(environ, logging_start_response)

    return logged


#: What ``--no-date`` answers in place of a date (waitress adds a real one when there is no header).
NO_DATE = "unknown"


def _without_date(app: _WsgiApp) -> _WsgiApp:
    """``app``, its answers carrying :data:`NO_DATE` as their ``Date``."""

    def dateless(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        def replace_date(status: str, headers: Any, exc_info: Any = None) -> Any:
            kept = [(name, value) for name, value in headers if name.lower() != "date"]
            return start_response(status, [*kept, ("Date", NO_DATE)], exc_info)

        return app(environ, replace_date)

    return dateless


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    redis_url: str | None = None,
    state_file: str | None = None,
    public_base_url: str | None = None,
    api_prefix: str = DEFAULT_API_PREFIX,
    accept_unknown_jobs: bool = False,
    access_log: bool = True,
    required_headers: Mapping[str, str] | None = None,
    no_date: bool = False,
    offline_after_sec: float = OFFLINE_AFTER_SEC,
) -> None:
    """Serve the simulator until SIGTERM or Ctrl-C (port 0 picks a free port; ``no_date``: ``--no-date``)."""
    store = Store(offline_after_sec)
    if state_file and store.load(state_file):
        print(f"coda-bridge devcloud loaded state from {state_file}", flush=True)
    app = create_app(
        store,
        redis_url=redis_url,
        public_base_url=public_base_url,
        api_prefix=api_prefix,
        accept_unknown_jobs=accept_unknown_jobs,
        required_headers=required_headers,
    )
    # "Task queue depth is N" on every request of a burst that outnumbers the threads.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    dispatcher = _TaskDispatcher()
    dispatcher.set_thread_count(SERVER_THREADS)
    ipv6 = ":" in host
    wsgi: _WsgiApp = _without_date(app) if no_date else app
    server = create_server(
        _access_logged(wsgi) if access_log else wsgi,
        _dispatcher=dispatcher,
        host=host or "0.0.0.0",
        port=port,
        # one family, so one address: "localhost" would also bind ::1, on another free port
        ipv4=not ipv6,
        ipv6=ipv6,
        threads=SERVER_THREADS,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=CHANNEL_TIMEOUT_SEC,
        # poll(), not select(): no FD_SETSIZE ceiling under CONNECTION_LIMIT connections
        asyncore_use_poll=True,
    )
    bound = server.effective_listen[0][1] if hasattr(server, "effective_listen") else server.effective_port
    shown = f"[{host}]" if ipv6 else host
    print(f"coda-bridge devcloud listening on http://{shown}:{bound}", flush=True)
    saver = _StateSaver(store, state_file) if state_file else None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.run()
    finally:
        server.close()
        if saver is not None:
            saver.close()
