"""The running node seen from outside: the background start, stop, and the log.

``start --daemon`` runs ``coda-bridge start`` in a new session with its
output appended to ``coda-bridge.log`` in the state directory and returns
once the node is ready, or says why it is not (:func:`detach`).  ``stop``
stops the process the pid file (:mod:`~coda_bridge.ops.pidfile`) names.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CodaError
from ..trust import python_argv
from .exits import exit_status
from .logfile import LOG_FILE_ENV, open_log
from .outcome import last_exit, one_line, record_exit
from .pidfile import DaemonRunning, release_pid_file, running_pid
from .proctree import alive, kill_tree, process_tree

__all__ = [
    "Launch",
    "StartFailed",
    "StopOutcome",
    "detach",
    "follow",
    "probe_ready",
    "ready_url",
    "stop_node",
    "tail",
]

#: How long one look at ``/ready`` may take while ``start --daemon`` waits for the node.
READY_PROBE_TIMEOUT_SEC = 2.0
#: Exit status of ``start --daemon`` when the node was not ready in time.
START_TIMEOUT_EXIT = 1
#: Time past the drain timeout before ``stop`` asks for a kill.
STOP_MARGIN_SEC = 15.0
#: How long ``stop`` waits after the second signal before it SIGKILLs the whole tree.
FORCE_WAIT_SEC = 5.0
#: How often waits look again.
POLL_SEC = 0.1
#: How often ``logs -f`` looks for new lines.
FOLLOW_POLL_SEC = 0.25


class StartFailed(CodaError):
    """``start --daemon``: the node stopped at start, or was not ready in time (exits with its code)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code or 1


@dataclass(frozen=True)
class Launch:
    """Where a detached node logs and claims its pid file, how to ask it whether it is ready, how long."""

    state_dir: Path
    log: Path
    pid_file: Path
    ready_url: str
    timeout_sec: float
    drain_timeout_sec: float


def ready_url(host: str, port: int) -> str:
    """The probes app's ``/ready`` as this host reaches it (a wildcard bind through the loopback)."""
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/ready" if ":" in host else f"http://{host}:{port}/ready"


def probe_ready(url: str) -> tuple[bool, str | None]:
    """Whether ``/ready`` says ready, and its reason when it does not (``None``: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=READY_PROBE_TIMEOUT_SEC) as response:  # noqa: S310 (http)
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (OSError, ValueError):
        return False, None
    try:
        answer = json.loads(body)
    except ValueError:
        return False, None
    if not isinstance(answer, dict):
        return False, None
    return bool(answer.get("ready")), str(answer.get("reason") or "") or None


def detach(args: Sequence[str], env: Mapping[str, str], launch: Launch) -> int:
    """Run ``coda-bridge start ARGS`` in a new session, output to the log; its pid once it is ready.

    Ready is the pid file naming it and its ``/ready`` answering 200.  If it
    stops first, :class:`StartFailed` carries its exit code and why; if it is
    not ready within ``launch.timeout_sec``, it is stopped and that is the
    failure.  Either way the reason is kept for ``status``.
    Secrets travel in ``env`` only, never in ``args``.
    """
    other = running_pid(launch.pid_file)
    if other is not None:
        raise DaemonRunning(other, launch.pid_file)
    log_fd = open_log(launch.log)
    offset = os.lseek(log_fd, 0, os.SEEK_END)
    try:
        process = subprocess.Popen(
            list(python_argv(sys.executable, "-m", "coda_bridge", "start", *args)),
            env={**env, LOG_FILE_ENV: str(launch.log)},  # SIGHUP reopens it (logrotate)
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + launch.timeout_sec
    waiting_for = "its pid file"
    while True:
        if process.poll() is not None:
            raise _stopped_at_start(process.pid, exit_status(process.returncode), launch, offset)
        if running_pid(launch.pid_file) == process.pid:
            ready, reason = probe_ready(launch.ready_url)
            if ready:
                return process.pid
            waiting_for = reason or f"an answer from {launch.ready_url}"
        if time.monotonic() > deadline:
            raise _not_ready(process, waiting_for, launch, offset)
        time.sleep(POLL_SEC)


def _stopped_at_start(pid: int, code: int, launch: Launch, offset: int) -> StartFailed:
    """Why the node of ``pid`` stopped: what its supervisor kept, else its last words in the log."""
    record = last_exit(launch.state_dir)
    if record is not None and record.pid == pid and record.code == code and record.explained:
        reason = record.reason
    else:
        reason = _last_words(_read_from(launch.log, offset))
        record_exit(launch.state_dir, pid, code, reason)
    return StartFailed(f"coda-bridge stopped at start (code {code}): {one_line(reason)}", code)


def _not_ready(
    process: subprocess.Popen[bytes], waiting_for: str, launch: Launch, offset: int
) -> StartFailed:
    """Stop a node that did not become ready in time; the failure, kept for ``status``."""
    if running_pid(launch.pid_file) == process.pid:
        stop_node(launch.pid_file, launch.drain_timeout_sec)
    else:  # not even its pid file yet: nothing of the node runs but this process and what it forked
        kill_tree(process_tree(process.pid))
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(FORCE_WAIT_SEC)
    if waiting_for == "its pid file":
        waiting_for = _last_words(_read_from(launch.log, offset))
    reason = f"not ready within {launch.timeout_sec:g} s (CODA_START_TIMEOUT_SEC), stopped: {waiting_for}"
    record_exit(launch.state_dir, process.pid, START_TIMEOUT_EXIT, reason)
    return StartFailed(f"coda-bridge {one_line(reason)}; log: {launch.log}", START_TIMEOUT_EXIT)


def _last_words(output: str) -> str:
    """The line of ``output`` that best says why it stopped: its last error, else its last line."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "critical" in line.lower()]
    return (errors or lines or ["(no output)"])[-1]


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class StopOutcome:
    """What ``stop`` did: the pid it stopped (``None``: nothing ran), and whether it had to kill."""

    pid: int | None
    forced: bool = False
    seconds: float = 0.0


def _wait_gone(pids: Sequence[int], timeout_sec: float) -> bool:
    deadline = time.monotonic() + timeout_sec
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SEC)
    return True


def stop_node(pid_file: Path, drain_timeout_sec: float) -> StopOutcome:
    """Stop the node holding ``pid_file`` as ``start`` stops on Ctrl-C: drain, then kill if it hangs."""
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return StopOutcome(None)
    started = time.monotonic()
    tree = process_tree(pid)
    os.kill(pid, signal.SIGTERM)
    forced = False
    if not _wait_gone([pid], drain_timeout_sec + STOP_MARGIN_SEC):
        forced = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the second signal: the group kills its processes
        if not _wait_gone([pid], FORCE_WAIT_SEC):
            kill_tree(sorted(set(tree) | set(process_tree(pid))))
    leftovers = [p for p in tree if p != pid and alive(p)]
    if leftovers and not _wait_gone(leftovers, FORCE_WAIT_SEC):
        forced = True
        kill_tree(leftovers)
    release_pid_file(pid_file, pid)
    return StopOutcome(pid, forced, time.monotonic() - started)


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (reads from the end; fine for large logs)."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = position = handle.tell()
            chunk = b""
            while position > 0 and chunk.count(b"\n") <= lines:
                step = min(8192, position)
                position -= step
                handle.seek(position)
                chunk = handle.read(end - position)
    except FileNotFoundError:
        return []
    return chunk.decode(errors="replace").splitlines()[-lines:]


def follow(path: Path, *, poll_sec: float = FOLLOW_POLL_SEC) -> Iterator[str]:
    """Lines appended to ``path`` from now on (this call), forever (until the caller stops iterating)."""
    return _follow(path, path.stat().st_size if path.exists() else 0, poll_sec)


def _follow(path: Path, position: int, poll_sec: float) -> Iterator[str]:
    pending = b""
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < position:  # truncated or replaced
            position = 0
        if size > position:
            with path.open("rb") as handle:
                handle.seek(position)
                data = handle.read()
            position += len(data)
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
        else:
            time.sleep(poll_sec)
