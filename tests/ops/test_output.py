"""The supervisor's paced output: a slow or vanished reader never blocks it, and nothing is silently lost."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import wait_until
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


def pumped(out: PacedOutput) -> int:
    """Bytes still waiting after a pump."""
    out.pump()
    return out.pending


def test_lines_written_to_a_full_filesystem_wait_and_go_out_once_there_is_space(tmp_path: Path) -> None:
    # Given output to a device that is always full (/dev/full: every write fails with ENOSPC)
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        out = PacedOutput(fd, limit_bytes=30)
        # When lines are written, more than the buffer holds, and pumped
        out.write("first line\n")
        out.write("second line\n")
        for _ in range(10):
            out.write("a line that no longer fits\n")
        out.pump()
        # Then they wait (the disk is full, the reader is not gone)
        assert out.pending == len(b"first line\nsecond line\n")
        # When space is back (the descriptor now a file with room) and the retry is due
        log = tmp_path / "log"
        file_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(file_fd, fd)
        os.close(file_fd)
        wait_until(lambda: pumped(out) == 0, 5, "the waiting lines to be written")
        # Then the waiting lines are there, and the dropped ones are counted with their cause
        assert log.read_text() == (
            "first line\nsecond line\n"
            "... 10 line(s) of output dropped: the log's filesystem was full (No space left on device)\n"
        )
    finally:
        os.close(fd)
