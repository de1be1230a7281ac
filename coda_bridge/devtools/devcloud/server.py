"""Run the simulator as a real HTTP server, or start one as a subprocess.

:func:`serve` is what ``python -m coda_bridge.devtools.devcloud`` runs: waitress
(a pool of request threads, HTTP/1.1 keep-alive), one ``listening on
http://host:port`` line on stdout.
:func:`start_devcloud_process` launches that command on a free port (the
server binds port 0 and reports the real one) and waits until the health
endpoint answers, so tests and the demo talk to a real process.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import requests
from waitress import create_server
from waitress.task import ThreadedTaskDispatcher

from ...errors import CodaError
from .admin_client import DevCloudClient
from .app_factory import DEFAULT_API_PREFIX, create_app
from .store import OFFLINE_AFTER_SEC, Store

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "REQUIRED_HEADERS_VARIABLE",
    "DevCloudProcess",
    "DevCloudStartError",
    "serve",
    "start_devcloud_process",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: The variable holding ``--required-headers`` (a JSON object), so header values stay out of argv.
REQUIRED_HEADERS_VARIABLE = "CODA_DEVCLOUD_REQUIRED_HEADERS"
#: How long :func:`start_devcloud_process` waits for the health endpoint (a process that dies is
#: reported at once; a busy machine took more than 15 s to bring one up).
STARTUP_TIMEOUT_SEC = 60.0
#: How long :meth:`DevCloudProcess.stop` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT_SEC = 5.0
#: How often the state file is rewritten when something changed.
STATE_SAVE_INTERVAL_SEC = 1.0
#: Poll interval while waiting for the subprocess to come up.
STARTUP_POLL_SEC = 0.05
#: Lines of the subprocess log quoted when it fails to start.
LOG_TAIL_LINES = 20
#: Request threads.  A delay fault holds its thread for ``delay_sec``: 32 lets
#: every delivery and control thread of a few nodes (8 + 2 each) sit in one
#: while the admin API and the rest still answer.
SERVER_THREADS = 32
#: Open connections before the server stops accepting; idle keep-alive ones count.
CONNECTION_LIMIT = 500
#: An idle keep-alive connection is closed after this long.
CHANNEL_TIMEOUT_SEC = 60
#: On SIGTERM, how long requests still running (a delay fault) may hold up the
#: exit; waitress's own 5 s would meet :meth:`DevCloudProcess.stop`'s SIGKILL.
SHUTDOWN_GRACE_SEC = 1.0

LISTEN_RE = re.compile(r"listening on (http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[3]


class DevCloudStartError(CodaError):
    """The simulator subprocess did not come up."""


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
        self._thread.join(timeout=STOP_TIMEOUT_SEC)
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


class DevCloudProcess:
    """A running ``python -m coda_bridge.devtools.devcloud``; stop it when done (or use ``with``)."""

    def __init__(
        self, process: subprocess.Popen[bytes], base_url: str, log_path: Path, *, own_log: bool = False
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path
        self._own_log = own_log

    def __repr__(self) -> str:
        return f"DevCloudProcess(pid={self.pid}, base_url={self.base_url!r})"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def client(self, *, timeout_sec: float = 10.0) -> DevCloudClient:
        """An admin client for this simulator."""
        return DevCloudClient(self.base_url, timeout_sec=timeout_sec)

    def output(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_sec: float = STOP_TIMEOUT_SEC) -> int:
        """SIGTERM, then SIGKILL after ``timeout_sec``; returns the exit code.

        A temporary log made by :func:`start_devcloud_process` is removed.
        """
        _LIVE.discard(self)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_sec)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_sec)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        return int(self.process.returncode)

    def __enter__(self) -> DevCloudProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_LIVE: set[DevCloudProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Never leave a simulator running after the interpreter that started it."""
    for proc in list(_LIVE):
        proc.stop(timeout_sec=1.0)


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def start_devcloud_process(
    *,
    redis_url: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    state_file: str | os.PathLike[str] | None = None,
    public_base_url: str | None = None,
    api_prefix: str = DEFAULT_API_PREFIX,
    accept_unknown_jobs: bool = False,
    access_log: bool = False,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    startup_timeout_sec: float = STARTUP_TIMEOUT_SEC,
    required_headers: Mapping[str, str] | None = None,
) -> DevCloudProcess:
    """Launch the simulator in a subprocess and wait until its health endpoint answers.

    Port 0 (the default) lets the server pick a free port, read back from
    its ``listening on`` line, so parallel tests never race for one.  Output
    goes to ``log_path`` (by default a temporary file, removed by ``stop``).
    ``required_headers`` protect the node API (see :func:`.app_factory.create_app`);
    they reach the subprocess through its environment, never its argv.
    """
    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="coda-devcloud-", suffix=".log")
        os.close(fd)
        log_path = name
    log_file = Path(log_path)
    command = [sys.executable, "-m", "coda_bridge.devtools.devcloud", "--host", host, "--port", str(port)]
    if redis_url:
        command += ["--redis-url", redis_url]
    if state_file is not None:
        command += ["--state-file", os.fspath(state_file)]
    if public_base_url:
        command += ["--public-url", public_base_url]
    if api_prefix != DEFAULT_API_PREFIX:
        command += ["--api-prefix", api_prefix]
    if accept_unknown_jobs:
        command.append("--accept-unknown-jobs")
    command.append("--access-log" if access_log else "--no-access-log")
    command += list(extra_args)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), child_env.get("PYTHONPATH")]))
    child_env["PYTHONUNBUFFERED"] = "1"
    if required_headers:
        child_env[REQUIRED_HEADERS_VARIABLE] = json.dumps(dict(required_headers))
    with log_file.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env
        )
    started = DevCloudProcess(process, "", log_file, own_log=own_log)
    _LIVE.add(started)
    try:
        _wait_until_up(started, host, "/" + api_prefix.strip("/"), startup_timeout_sec, required_headers)
    except BaseException:
        started.stop(timeout_sec=1.0)
        raise
    return started


def _wait_until_up(
    proc: DevCloudProcess,
    host: str,
    api_prefix: str,
    timeout_sec: float,
    headers: Mapping[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if not proc.alive():
            code = proc.process.returncode
            raise DevCloudStartError(
                f"devcloud exited with code {code} before answering:\n{_tail(proc.output())}"
            )
        if not proc.base_url:
            found = LISTEN_RE.search(proc.output())
            if found:
                port = found.group(1).rsplit(":", 1)[1]
                proc.base_url = f"http://{_client_host(host)}:{port}"
        if proc.base_url:
            try:
                health = f"{proc.base_url}{api_prefix}/health"
                if requests.get(health, headers=dict(headers or {}), timeout=1.0).ok:
                    return
            except requests.RequestException:
                pass
        time.sleep(STARTUP_POLL_SEC)
    raise DevCloudStartError(f"devcloud did not answer within {timeout_sec:g} s:\n{_tail(proc.output())}")
