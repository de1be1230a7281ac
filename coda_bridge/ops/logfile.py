"""The log file of a node started with ``start --daemon``: opened by the launcher, reopened on SIGHUP.

The launcher hands the node's supervisor its log as standard output and
error, and names the file in :data:`LOG_FILE_ENV`.  After logrotate renames
the file (``create``) and sends SIGHUP, :func:`reopen_log` opens the path
again and puts the new file under both descriptors, so new lines go there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..identity.credentials import FILE_MODE

__all__ = ["LOG_FILE_ENV", "hangup_reopen", "open_log", "reopen_log"]

#: The environment variable naming the log file of a node started with ``start --daemon``.
LOG_FILE_ENV = "CODA_LOG_FILE"


def open_log(path: Path) -> int:
    """A descriptor appending to ``path`` (created owner-only when missing)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)


def reopen_log(path: Path) -> None:
    """Standard output and error append to ``path`` from now on (the file there now, created if gone)."""
    fd = open_log(path)
    try:
        for target in (1, 2):
            os.dup2(fd, target)
    finally:
        os.close(fd)


def hangup_reopen() -> str:
    """SIGHUP in a process writing the log itself (``start -d --one-process``): reopen it; one line saying so.

    Only when standard output is the file :data:`LOG_FILE_ENV` names: a
    process whose output goes to a pipe (a part under ``start``, honcho,
    systemd's journal) has no file of its own to reopen, and goes on.
    """
    path = os.environ.get(LOG_FILE_ENV)
    try:
        to_file = stat.S_ISREG(os.fstat(1).st_mode)
    except OSError:
        to_file = False
    if not path or not to_file:
        return "SIGHUP received: no log file of this process to reopen; going on"
    try:
        reopen_log(Path(path))
    except OSError as exc:
        return f"SIGHUP received: cannot reopen the log {path}: {exc}; kept the old one"
    return f"SIGHUP received: log reopened at {path}"
