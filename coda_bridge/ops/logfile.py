"""The log file of a node started with ``start --daemon``: opened by the launcher, reopened on SIGHUP.

The launcher hands the node's supervisor its log as standard output and
error, and names the file in :data:`LOG_FILE_ENV`.  After logrotate renames
the file (``create``) and sends SIGHUP, :func:`reopen_log` opens the path
again and puts the new file under both descriptors, so new lines go there.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..identity.credentials import FILE_MODE

__all__ = ["LOG_FILE_ENV", "open_log", "reopen_log"]

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
