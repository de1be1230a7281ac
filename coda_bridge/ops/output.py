"""The supervisor's standard output, written only as fast as its reader takes it.

A stalled reader (a terminal paused with Ctrl-S, a pager, a pipe nobody
reads) must never block supervising: restarts and the drain go on. Lines
wait in a bounded buffer; a full one drops new lines and says how many
once the reader is back. A reader that is gone (a closed pipe, a hung-up
terminal) drops everything from then on. A log file whose filesystem is
full keeps its lines waiting and is tried again a little later, so the log
resumes once space is freed. The descriptor stays blocking: it is shared
with the shell that started us.
"""

from __future__ import annotations

import errno
import os
import select
import time

__all__ = ["OUTPUT_BUFFER_BYTES", "PacedOutput"]

#: Most output waiting for a slow reader; beyond it new lines are dropped (and counted).
OUTPUT_BUFFER_BYTES = 1 << 20
#: Most bytes written at once after a look says the reader has room (a tty's wake-up mark is 256).
WRITE_CHUNK_BYTES = 512
#: How long output waits after a write failed for lack of space before it is tried again.
FULL_RETRY_SEC = 1.0
#: Write errors that pass once space is freed: the lines wait (and the buffer's bound holds).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class PacedOutput:
    """A text stream for honcho's printer over descriptor ``fd`` that never blocks its writer."""

    def __init__(self, fd: int, *, limit_bytes: int = OUTPUT_BUFFER_BYTES) -> None:
        self.fd = fd
        self.limit_bytes = limit_bytes
        self.dropped_lines = 0
        self._buffer = bytearray()
        self._gone = False
        self._full_until = 0.0  # monotonic time before which a full filesystem is not tried again
        self._drop_reason = "nobody was reading them"
        self._pumping = False  # a signal handler that prints while a pump runs leaves it to that pump
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, text: str) -> int:
        if self._gone:
            return len(text)
        data = text.encode("utf-8", "replace")
        if len(self._buffer) + len(data) > self.limit_bytes:
            self.dropped_lines += max(text.count("\n"), 1)
        else:
            self._buffer += data
        return len(text)

    def reopened(self) -> None:
        """The descriptor now names another file (a reopened log): write there, what waits first."""
        self._gone = False
        self._full_until = 0.0

    def flush(self) -> None:
        self.pump()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def pump(self) -> None:
        """Write what the reader has room for now, without waiting."""
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump()
        finally:
            self._pumping = False

    def _pump(self) -> None:
        if time.monotonic() < self._full_until:
            return
        while self._buffer and not self._gone and self._poll.poll(0):
            try:
                written = os.write(self.fd, self._buffer[:WRITE_CHUNK_BYTES])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _NO_SPACE:  # a full disk: the lines wait, tried again in a while
                    self._full_until = time.monotonic() + FULL_RETRY_SEC
                    self._drop_reason = f"the log's filesystem was full ({os.strerror(exc.errno)})"
                    return
                self._gone = True  # the reader is gone for good
                self._buffer.clear()
                return
            del self._buffer[:written]
        if self.dropped_lines and len(self._buffer) < self.limit_bytes // 2:
            lines, self.dropped_lines = self.dropped_lines, 0
            self._buffer += f"... {lines} line(s) of output dropped: {self._drop_reason}\n".encode()
            self._drop_reason = "nobody was reading them"

    def drain(self, timeout_sec: float) -> None:
        """Write what waits, for up to ``timeout_sec`` (at exit: the last lines, if anyone reads)."""
        deadline = time.monotonic() + timeout_sec
        while self._buffer and not self._gone:
            self.pump()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._buffer:
                time.sleep(min(left, 0.05))  # not poll(): a handler that prints would poll at the same time
