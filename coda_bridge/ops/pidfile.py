"""The node's pid file: which process is the node, named so that it can never be another one.

It lives in a runtime directory the system empties at boot
(:func:`runtime_dir`), one per state directory (:func:`pid_file_for`), and
names the process by pid and by :func:`process_identity` (boot and start
time), so a pid file left from before a reboot, or naming a process that
took the same pid, names no node.  ``start`` claims it for as long as it
runs; ``stop``, ``status`` and a second ``start`` read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from ..errors import CodaError, ConfigError
from ..identity.credentials import FILE_MODE
from .proctree import alive

__all__ = [
    "DaemonRunning",
    "claim_pid_file",
    "pid_file_for",
    "process_identity",
    "release_pid_file",
    "running_pid",
    "runtime_dir",
]

#: Where root's runtime directory goes (emptied at boot).
ROOT_RUNTIME_PARENT = "/run"


class DaemonRunning(CodaError):
    """A node already runs with this state directory."""

    def __init__(self, pid: int, pid_file: Path) -> None:
        super().__init__(
            f"coda-bridge is already running (pid {pid}, pid file {pid_file}); "
            f"stop it first with `coda-bridge stop`"
        )
        self.pid = pid


def runtime_dir() -> Path:
    """Where the pid files live: a directory the system empties at boot.

    ``/run/coda-bridge`` for root, ``$XDG_RUNTIME_DIR/coda-bridge`` for
    another user, else a private ``coda-bridge-<uid>`` in the temporary
    directory.  One that another user owns or can write to is refused.
    """
    uid = os.geteuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if uid == 0 and Path(ROOT_RUNTIME_PARENT).is_dir():
        path = Path(ROOT_RUNTIME_PARENT) / "coda-bridge"
    elif xdg and Path(xdg).is_dir():
        path = Path(xdg) / "coda-bridge"
    else:
        path = Path(tempfile.gettempdir()) / f"coda-bridge-{uid}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(f"runtime directory {path} cannot be used: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        raise ConfigError(
            f"runtime directory {path} is not a directory of this user that only it can write to; "
            "remove it, or set XDG_RUNTIME_DIR"
        )
    return path


def pid_file_for(state_dir: Path) -> Path:
    """The pid file of the node of ``state_dir``, in :func:`runtime_dir` (named by the state directory)."""
    digest = hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:16]
    return runtime_dir() / f"node-{digest}.pid"


def process_identity(pid: int) -> str | None:
    """What names ``pid`` and no other process, ever: the boot and the process's start time in ticks.

    ``None`` when it does not run (a zombie does not).
    """
    if not alive(pid):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
        start_ticks = stat_line.rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):  # no procfs: psutil's start time, to the second
        try:
            return f"created-{psutil.Process(pid).create_time():.0f}"
        except psutil.Error:
            return None
    return f"{boot}-{start_ticks}"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CodaError(f"pid file {path} cannot be read: {exc.strerror}") from None
    try:
        record = json.loads(text)
        int(record["pid"])
    except (ValueError, TypeError, KeyError):
        return None  # not ours (an older bare pid, a half-written file): names no node
    return record if isinstance(record, dict) else None


def _read_pid(path: Path) -> int | None:
    record = _read_record(path)
    return int(record["pid"]) if record is not None else None


def running_pid(pid_file: Path) -> int | None:
    """The pid of the node that holds ``pid_file``, or ``None`` (absent, stale, or naming another process).

    The file names a process by pid and :func:`process_identity`: a pid reused
    by any other process (after a reboot, or a wrap-around) does not match.
    """
    record = _read_record(pid_file)
    if record is None:
        return None
    pid = int(record["pid"])
    identity = record.get("identity")
    return pid if identity and process_identity(pid) == identity else None


@contextlib.contextmanager
def claim_pid_file(pid_file: Path) -> Iterator[int]:
    """Hold ``pid_file`` with this process's pid; refuse with :class:`DaemonRunning` if one runs."""
    pid = os.getpid()
    record = json.dumps({"pid": pid, "identity": process_identity(pid)})
    for _ in range(3):
        try:
            fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            other = running_pid(pid_file)
            if other is not None and other != pid:
                raise DaemonRunning(other, pid_file) from None
            pid_file.unlink(missing_ok=True)  # stale: its process is gone, or it never was ours
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(record + "\n")
        break
    else:
        raise CodaError(f"pid file {pid_file} keeps reappearing; is another start racing this one?")
    try:
        yield pid
    finally:
        release_pid_file(pid_file, pid)


def release_pid_file(pid_file: Path, pid: int) -> None:
    """Remove ``pid_file`` if it still names ``pid`` (never another node's)."""
    with contextlib.suppress(OSError, CodaError):
        if _read_pid(pid_file) == pid:
            pid_file.unlink(missing_ok=True)
