"""The output of ``start``'s processes passed on as whole lines, each with its process's ``name |``.

Lines go through honcho's printer (or, for JSON logs,
:mod:`~coda_bridge.ops.jsonlines`) to our standard output, paced to a slow
reader in a bounded buffer (:mod:`~coda_bridge.ops.output`), so a paused
terminal never stops :mod:`~coda_bridge.ops.group` supervising.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import selectors
import sys
import time
from collections.abc import Iterable

from honcho.printer import Message, Printer

from .jsonlines import JsonPrinter
from .members import Member
from .output import PacedOutput

__all__ = ["MAX_LINE_BYTES", "SYSTEM_NAME", "OutputRelay"]

#: How long the group waits, at the end, for the last lines of its processes.
OUTPUT_FLUSH_SEC = 0.5
#: Most bytes read from one process's output at a time.
READ_CHUNK_BYTES = 65536
#: Longest line kept whole: a process writing more without a newline has it printed in pieces.
MAX_LINE_BYTES = 65536
#: Name of the supervisor's own lines.
SYSTEM_NAME = "system"


def _paced_stdout() -> PacedOutput | None:
    """Our standard output, paced to its reader; None when it is no descriptor (tests capture it)."""
    try:
        sys.stdout.flush()
        return PacedOutput(sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError
        return None


class OutputRelay:
    """Reads the members' output pipes and prints their whole lines, and the supervisor's own."""

    def __init__(self, printer: Printer | None = None, *, json_lines: bool = False) -> None:
        # NO_COLOR (https://no-color.org): any value turns the coloured name prefixes off
        self.output = None if printer else _paced_stdout()
        if printer is None and json_lines:  # CODA_LOG_FORMAT=json: every line one JSON object
            printer = JsonPrinter(self.output or sys.stdout, system_name=SYSTEM_NAME)
        self.printer = printer or Printer(
            output=self.output or sys.stdout, colour=not os.environ.get("NO_COLOR")
        )
        self.printer.width = max(self.printer.width, len(SYSTEM_NAME))
        self._selector = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}  # per output, the start of a line not ended yet

    def named(self, name: str) -> None:
        """Make room for ``name`` in the prefixes."""
        self.printer.width = max(self.printer.width, len(name))

    def write(self, name: str, data: bytes | str, colour: str | None = None) -> None:
        message = Message(type="line", data=data, time=datetime.datetime.now(), name=name, colour=colour)
        with contextlib.suppress(OSError):  # our output is gone (a closed pipe, a hung-up terminal)
            self.printer.write(message)  # supervising goes on

    def system_print(self, text: str) -> None:
        self.write(SYSTEM_NAME, text)

    def watch(self, member: Member, fd: int) -> None:
        os.set_blocking(fd, False)
        self._selector.register(fd, selectors.EVENT_READ, member)
        self._partial[fd] = b""
        member.outputs.add(fd)

    def relay(self, timeout: float) -> None:
        """Pass on what the processes wrote, whole lines, waiting up to ``timeout`` for any."""
        for key, _ in self._selector.select(timeout):
            member: Member = key.data
            fd = key.fd
            try:
                data = os.read(fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # every writer closed it: this run of the process is over
                self.close(member, fd)
                continue
            *lines, rest = (self._partial[fd] + data).split(b"\n")
            while len(rest) > MAX_LINE_BYTES:
                lines.append(rest[:MAX_LINE_BYTES])
                rest = rest[MAX_LINE_BYTES:]
            self._partial[fd] = rest
            member.last_line = next((line for line in reversed(lines) if line.strip()), member.last_line)
            for line in lines:
                for start in range(0, len(line) or 1, MAX_LINE_BYTES):
                    self.write(member.name, line[start : start + MAX_LINE_BYTES] + b"\n", member.colour)

    def close(self, member: Member, fd: int) -> None:
        rest = self._partial.pop(fd, b"")
        if rest:
            self.write(member.name, rest + b"\n", member.colour)
        self._selector.unregister(fd)
        os.close(fd)
        member.outputs.discard(fd)

    def finish(self, members: Iterable[Member]) -> None:
        """The last lines of the processes (for up to :data:`OUTPUT_FLUSH_SEC`), then every pipe closed."""
        flush_until = time.monotonic() + OUTPUT_FLUSH_SEC
        while self._selector.get_map() and time.monotonic() < flush_until:  # the last lines, then the summary
            self.relay(max(flush_until - time.monotonic(), 0))
        for member in members:
            for fd in list(member.outputs):  # a leftover (a grandchild still holding it): cut off
                self.close(member, fd)
        self._selector.close()

    def drain(self) -> None:
        """What still waits for a slow reader, for up to :data:`OUTPUT_FLUSH_SEC`."""
        if self.output is not None:
            self.output.drain(OUTPUT_FLUSH_SEC)
