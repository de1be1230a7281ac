"""The running node seen from outside: its pid file, the detached start, stop, and its log.

``coda-bridge start`` (foreground or not) claims ``coda-bridge.pid`` in the
state directory for as long as it runs, so ``stop``, ``status`` and a
second ``start`` find it; a pid file whose process is gone (or is not
coda-bridge any more) is stale and replaced.  ``start --daemon`` runs
``coda-bridge start`` in a new session with its output appended to
``coda-bridge.log`` and returns once that process has claimed the pid file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CodaError
from ..identity.credentials import FILE_MODE, StatePaths
from ..trust import python_argv
from .proctree import alive, kill_tree, process_tree

__all__ = [
    "DaemonRunning",
    "StopOutcome",
    "claim_pid_file",
    "detach",
    "follow",
    "running_pid",
    "stop_node",
    "tail",
]

#: How long ``start --daemon`` waits for the detached process to claim the pid file.
START_CONFIRM_TIMEOUT_SEC = 20.0
#: Time past the drain timeout before ``stop`` asks for a kill.
STOP_MARGIN_SEC = 15.0
#: How long ``stop`` waits after the second signal before it SIGKILLs the whole tree.
FORCE_WAIT_SEC = 5.0
#: How often waits look again.
POLL_SEC = 0.1
#: Lines of the log quoted when the detached process dies at start.
LOG_TAIL_LINES = 15
#: How often ``logs -f`` looks for new lines.
FOLLOW_POLL_SEC = 0.25


class DaemonRunning(CodaError):
    """A node already runs with this state directory."""

    def __init__(self, pid: int, pid_file: Path) -> None:
        super().__init__(
            f"coda-bridge is already running (pid {pid}, pid file {pid_file}); "
            f"stop it first with `coda-bridge stop`"
        )
        self.pid = pid


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CodaError(f"pid file {path} cannot be read: {exc.strerror}") from None
    return int(text) if text.isdigit() else None


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` is a coda-bridge process (a reused pid after a reboot is not)."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: assume it is
    return b"coda" in cmdline


def running_pid(pid_file: Path) -> int | None:
    """The pid of the node that holds ``pid_file``, or ``None`` (absent or stale)."""
    pid = _read_pid(pid_file)
    return pid if pid is not None and _is_ours(pid) else None


@contextlib.contextmanager
def claim_pid_file(pid_file: Path) -> Iterator[int]:
    """Hold ``pid_file`` with this process's pid; refuse with :class:`DaemonRunning` if one runs."""
    pid = os.getpid()
    for _ in range(3):
        try:
            fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            other = running_pid(pid_file)
            if other is not None and other != pid:
                raise DaemonRunning(other, pid_file) from None
            pid_file.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{pid}\n")
        break
    else:
        raise CodaError(f"pid file {pid_file} keeps reappearing; is another start racing this one?")
    try:
        yield pid
    finally:
        if _read_pid(pid_file) == pid:
            pid_file.unlink(missing_ok=True)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(tail(path, lines))


def detach(args: Sequence[str], env: Mapping[str, str], paths: StatePaths) -> int:
    """Run ``coda-bridge start ARGS`` in a new session, output to the log; its pid once it runs.

    Secrets travel in ``env`` only, never in ``args``.
    """
    other = running_pid(paths.daemon_pid)
    if other is not None:
        raise DaemonRunning(other, paths.daemon_pid)
    log_fd = os.open(paths.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    offset = os.lseek(log_fd, 0, os.SEEK_END)
    try:
        process = subprocess.Popen(
            list(python_argv(sys.executable, "-m", "coda_bridge", "start", *args)),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + START_CONFIRM_TIMEOUT_SEC
    while _read_pid(paths.daemon_pid) != process.pid:
        if process.poll() is not None:
            output = _read_from(paths.daemon_log, offset).strip() or "(no output)"
            raise CodaError(f"coda-bridge exited at start (code {process.returncode}): {output[-2000:]}")
        if time.monotonic() > deadline:
            raise CodaError(
                f"coda-bridge (pid {process.pid}) did not claim {paths.daemon_pid} within "
                f"{START_CONFIRM_TIMEOUT_SEC:g} s; see {paths.daemon_log}"
            )
        time.sleep(POLL_SEC)
    return process.pid


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
    if _read_pid(pid_file) == pid:
        pid_file.unlink(missing_ok=True)
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
