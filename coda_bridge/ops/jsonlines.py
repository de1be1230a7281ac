"""The group's output as JSON lines (``CODA_LOG_FORMAT=json``), in place of honcho's ``name |`` prefixes.

A process's line that is already a JSON object passes through with the
part's name added (``part``); any other line (a raw traceback, a library
that prints) is wrapped into one, with the time it was read.  The
supervisor's own lines come out the same way, as part ``system``.  So
every line ``start`` writes, to a terminal or the ``-d`` log file, is one
JSON object with an ISO 8601 UTC ``time``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any, Protocol

from honcho.printer import Message

from ..logs import iso_time, mask

__all__ = ["PART_FIELD", "JsonLinesStream", "JsonPrinter", "json_line"]

#: The field naming which part of the group wrote the line.
PART_FIELD = "part"
#: The logger named in the supervisor's own lines, and in a wrapped line of a process.
SUPERVISOR_LOGGER = "coda_bridge.ops.group"
WRAPPED_LOGGER = "output"


def json_line(part: str, line: str, *, system: bool = False, now: float | None = None) -> str:
    """``line`` of ``part`` as one JSON object: passed through if it is one, wrapped otherwise."""
    try:
        entry: Any = json.loads(line)
    except ValueError:
        entry = None
    if isinstance(entry, dict) and "time" in entry:
        entry.setdefault(PART_FIELD, part)
        return json.dumps(entry, ensure_ascii=False)
    return json.dumps(
        {
            "time": iso_time(time.time() if now is None else now),
            "level": "INFO",
            PART_FIELD: part,
            "logger": SUPERVISOR_LOGGER if system else WRAPPED_LOGGER,
            "message": mask(line),
        },
        ensure_ascii=False,
    )


class TextOutput(Protocol):
    """Where lines go: standard output, or the group's paced version of it."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class JsonPrinter:
    """A honcho :class:`~honcho.printer.Printer` look-alike that writes each line as JSON to ``output``."""

    def __init__(self, output: TextOutput, *, system_name: str) -> None:
        self.output = output
        self.system_name = system_name
        self.width = 0  # what the group sets on honcho's printer; unused here

    def write(self, message: Message) -> None:
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        system = message.name == self.system_name
        for line in text.splitlines():
            if line.strip():
                self.output.write(json_line(message.name, line, system=system) + "\n")
        self.output.flush()


class JsonLinesStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` of a process that is the whole node (``start --one-process``):
    what is written raw (a print, a thread's traceback) goes out as JSON lines of ``part``."""

    def __init__(self, part: str, output: TextOutput) -> None:
        super().__init__()
        self.part = part
        self.output = output
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                if line.strip():
                    self.output.write(json_line(self.part, line) + "\n")
            if lines:
                self.output.flush()
        return len(text)
