"""Why the node last stopped: its exit code and one line saying why, kept in the state directory.

``start``'s supervisor writes it as the node stops, and ``start --daemon``
when the node it started failed or was not ready in time; ``status``
reads it, so a stopped node says why it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..logs import mask

__all__ = [
    "LAST_EXIT_FILE",
    "UNEXPLAINED",
    "LastExit",
    "forget_exit",
    "last_exit",
    "one_line",
    "record_exit",
    "record_start",
]

#: The record's file name in the state directory.
LAST_EXIT_FILE = "last-exit.json"
#: Longest reason kept (a line a terminal shows whole).
MAX_REASON_CHARS = 500
#: Ends the reason of a record written by a process that knows its code but not why (its output does).
UNEXPLAINED = "(its output says why)"
#: The reason of a run that started and recorded no exit (shown once it does not run any more).
NO_EXIT_RECORDED = "no exit recorded: killed with SIGKILL, or the host went down"


@dataclass(frozen=True)
class LastExit:
    """How a node's run ended: the supervisor's pid, its exit code, why, and when (Unix time).

    ``code`` is ``None`` for a run that started and recorded no exit (``stopped_at`` is its start).
    """

    pid: int
    code: int | None
    reason: str
    stopped_at: float

    @property
    def explained(self) -> bool:
        """Whether the reason says why, not only that it stopped."""
        return not self.reason.endswith(UNEXPLAINED)

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["stopped_at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.stopped_at))
        return record


def one_line(text: str) -> str:
    """``text`` as one short line with any secret masked; a JSON log line gives its message."""
    text = text.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            record = json.loads(text)
            text = str(record.get("message") or record.get("msg") or text)
    text = mask(" ".join(text.split()))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def record_start(state_dir: Path, pid: int) -> None:
    """Replace the last record with this run's start: a run that dies without a word then says so."""
    record_exit(state_dir, pid, None, NO_EXIT_RECORDED)


def record_exit(state_dir: Path, pid: int, code: int | None, reason: str) -> None:
    """Keep why the node of ``pid`` stopped (replacing the last record; never raises)."""
    record = LastExit(pid, code, one_line(reason), time.time())
    path = Path(state_dir) / LAST_EXIT_FILE
    temporary = path.with_name(f".{LAST_EXIT_FILE}.{os.getpid()}")
    with contextlib.suppress(OSError):
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle)
        temporary.replace(path)


def last_exit(state_dir: Path) -> LastExit | None:
    """The last record, or ``None`` (none yet, or unreadable)."""
    try:
        data = json.loads((Path(state_dir) / LAST_EXIT_FILE).read_text())
        code = None if data["code"] is None else int(data["code"])
        return LastExit(int(data["pid"]), code, str(data["reason"]), float(data["stopped_at"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def forget_exit(state_dir: Path) -> Path | None:
    """Remove the record (``reset``); the path removed, or ``None``."""
    path = Path(state_dir) / LAST_EXIT_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
