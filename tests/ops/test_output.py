"""The supervisor's paced output: a slow or vanished reader never blocks it, and nothing is silently lost."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coda_bridge.ops.output import PacedOutput


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_reader_that_does_not_read_never_blocks_the_writer(pipe: tuple[int, int]) -> None:
    # Given a pipe nobody reads (its 64 KiB fill at once) under a small buffer
    read_fd, write_fd = pipe
    output = PacedOutput(write_fd, limit_bytes=100_000)
    line = "x" * 999 + "\n"

    # When far more is written than the pipe and the buffer hold
    for _ in range(1000):
        output.write(line)
        output.flush()

    # Then every write returned, and what did not fit was counted, not kept
    assert output.pending <= 100_000
    assert output.dropped_lines > 0
    # And once the reader is back, what waited comes, and then how many lines were dropped
    dropped = output.dropped_lines
    text = b""
    for _ in range(100):
        text += _read_all(read_fd)
        output.pump()
        if f"... {dropped} line(s) of output dropped".encode() in text:
            break
    assert f"... {dropped} line(s) of output dropped: nobody was reading them".encode() in text


def test_a_reader_that_is_gone_drops_everything_from_then_on(pipe: tuple[int, int]) -> None:
    # Given `start | tee` after tee died
    read_fd, write_fd = pipe
    os.close(read_fd)
    output = PacedOutput(write_fd)

    # When lines are written
    output.write("a line\n")
    output.flush()
    output.write("another\n")
    output.flush()
    # Then nothing raises, and nothing piles up
    assert output.pending == 0


def test_text_that_is_not_utf8_encodable_is_replaced_not_fatal(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    output = PacedOutput(write_fd)

    output.write("half a surrogate: \udcff\n")
    output.flush()

    assert _read_all(read_fd) == b"half a surrogate: ?\n"
