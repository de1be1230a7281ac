"""Nothing from the working directory runs as the node.

Two rules, for every process of the node:

- the interpreter never puts the working directory (or a script's folder) on
  the import path: each ``python`` the node runs gets :data:`SAFE_PATH_FLAG`
  and :data:`SAFE_PATH_ENV` (Python's ``-P`` / ``PYTHONSAFEPATH``);
- a file the node reads to decide what to run (its settings files, the
  device YAML, the executor's module) must be one that only this user or
  root can change, as credentials are (:mod:`~coda_bridge.identity.credentials`
  is stricter still): :func:`check_trusted` refuses anything else.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["SAFE_PATH_ENV", "SAFE_PATH_FLAG", "UntrustedFile", "check_trusted", "python_argv", "untrusted"]

#: The interpreter flag that keeps the working directory off ``sys.path`` (Python 3.11+).
SAFE_PATH_FLAG = "-P"
#: The same for every Python a process of the node starts (its children inherit the environment).
SAFE_PATH_ENV = {"PYTHONSAFEPATH": "1"}
#: Mode bits that let others change a file: written by anyone, or by a group that is not ours.
_OTHERS_WRITE = stat.S_IWOTH
_GROUP_WRITE = stat.S_IWGRP


class UntrustedFile(ConfigError):
    """A file the node would read to decide what to run can be changed by another user."""


def python_argv(python: str, *args: str) -> tuple[str, ...]:
    """``python -P ARGS``: an interpreter that imports nothing from the working directory."""
    return (python, SAFE_PATH_FLAG, *args)


def untrusted(path: Path) -> str | None:
    """Why ``path`` (and the folder holding it) may not be trusted, or ``None`` when it may.

    Trusted means owned by this user or root, and writable by no one else:
    not by others, and by a group only when it is this process's own group
    or root's.  A symlink is judged by what it points to.
    """
    me = os.geteuid()
    for target, kind in ((path, "file"), (path.resolve().parent, "folder")):
        try:
            info = target.stat()
        except OSError as exc:
            return f"{kind} {target} cannot be checked ({exc.strerror})"
        if kind == "folder" and info.st_mode & stat.S_ISVTX:
            continue  # a sticky folder (/tmp): only a file's owner can replace it, and the file is checked
        if info.st_uid not in (me, 0):
            return f"{kind} {target} belongs to uid {info.st_uid}, not to this user (uid {me}) or root"
        mode = stat.S_IMODE(info.st_mode)
        if mode & _OTHERS_WRITE or (mode & _GROUP_WRITE and info.st_gid not in (os.getegid(), 0)):
            return f"{kind} {target} has mode {mode:04o}: other users can change it"
    return None


def check_trusted(path: Path, what: str) -> None:
    """Refuse to read ``path`` (``what`` it is, for the message) when another user can change it."""
    reason = untrusted(path)
    if reason is not None:
        fix = f"make it and its folder yours or root's and writable only by the owner (chmod go-w {path})"
        raise UntrustedFile(f"refusing {what} {path}: {reason}; {fix}")
