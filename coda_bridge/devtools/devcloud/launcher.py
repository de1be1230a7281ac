"""Start the simulator as a process of its own, on a free port, and stop it.

:func:`start_devcloud_process` runs the ``python -m coda_bridge.devtools.devcloud``
command line (:func:`.server.serve`) on a free port (the server binds port 0
and reports the real one) and waits until the health endpoint answers, so
tests and the demo talk to a real process.  The process is forked from a
fork server that imported the simulator once (:mod:`multiprocessing`'s
``forkserver``): the test suite starts over a hundred simulators, and
importing Flask, Redis, requests and PyJWT was most of each one's start.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

import requests

from ...errors import CodaError
from .admin_client import DevCloudClient
from .app_factory import DEFAULT_API_PREFIX
from .server import DEFAULT_HOST, REQUIRED_HEADERS_VARIABLE

__all__ = ["DevCloudProcess", "DevCloudStartError", "start_devcloud_process"]

#: How long :func:`start_devcloud_process` waits for the health endpoint (a process that dies is
#: reported at once; a busy machine took more than 15 s to bring one up).
STARTUP_TIMEOUT_SEC = 60.0
#: How long :meth:`DevCloudProcess.stop` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT_SEC = 5.0
#: Poll interval while waiting for the subprocess to come up.
STARTUP_POLL_SEC = 0.05
#: Lines of the subprocess log quoted when it fails to start.
LOG_TAIL_LINES = 20

LISTEN_RE = re.compile(r"listening on (http://\S+)")
#: What the fork server imports once for every simulator it forks: the command line and the server.
FORK_SERVER_PRELOAD = ["coda_bridge.devtools.devcloud.cli"]


class DevCloudStartError(CodaError):
    """The simulator subprocess did not come up."""


class ForkedProcess:
    """A process forked from the fork server, with the calls of ``subprocess.Popen`` the launcher uses.

    ``returncode`` is ``None`` while it runs, then its exit code, or minus
    the signal that ended it (as ``Popen`` has it).
    """

    def __init__(self, process: BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None, "started in __init__"
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"devcloud (pid {self.pid})", timeout or 0.0)
        return code

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class DevCloudProcess:
    """A running ``python -m coda_bridge.devtools.devcloud``; stop it when done (or use ``with``)."""

    def __init__(
        self, process: ForkedProcess, base_url: str, log_path: Path, *, own_log: bool = False
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
        code = self.process.poll()
        if code is None:
            self.process.terminate()
            try:
                code = self.process.wait(timeout=timeout_sec)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait(timeout=timeout_sec)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        return code

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
    args = ["--host", host, "--port", str(port)]
    if redis_url:
        args += ["--redis-url", redis_url]
    if state_file is not None:
        args += ["--state-file", os.fspath(state_file)]
    if public_base_url:
        args += ["--public-url", public_base_url]
    if api_prefix != DEFAULT_API_PREFIX:
        args += ["--api-prefix", api_prefix]
    if accept_unknown_jobs:
        args.append("--accept-unknown-jobs")
    args.append("--access-log" if access_log else "--no-access-log")
    args += list(extra_args)
    child_env = dict(os.environ if env is None else env)
    if required_headers:
        child_env[REQUIRED_HEADERS_VARIABLE] = json.dumps(dict(required_headers))
    log_file.write_bytes(b"")
    started = DevCloudProcess(_fork(args, child_env, log_file), "", log_file, own_log=own_log)
    _LIVE.add(started)
    try:
        _wait_until_up(started, host, "/" + api_prefix.strip("/"), startup_timeout_sec, required_headers)
    except BaseException:
        started.stop(timeout_sec=1.0)
        raise
    return started


def _fork(args: Sequence[str], env: Mapping[str, str], log_file: Path) -> ForkedProcess:
    """Fork ``python -m coda_bridge.devtools.devcloud ARGS`` from the fork server."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_SERVER_PRELOAD)
    process = context.Process(
        target=_run_forked,
        args=(list(args), dict(env), str(log_file)),
        name="devcloud",
        daemon=True,  # stopped, not waited for, if the interpreter that forked it exits first
    )
    process.start()
    return ForkedProcess(process)


def _run_forked(args: list[str], env: dict[str, str], log_path: str) -> None:
    """In the forked process: the command line's environment and output file, then its ``main``.

    It runs on the fork server's imports and ``sys.path`` (the launching process's), so the
    environment only matters to what the simulator reads from it, as ``--required-headers`` does.
    """
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each line reaches the log at once
    from .cli import devcloud  # noqa: PLC0415 - preloaded by the fork server; the parent need not import it

    devcloud.main(args=args, prog_name="python -m coda_bridge.devtools.devcloud")


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
