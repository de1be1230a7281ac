"""NO_COLOR (https://no-color.org) turns the coloured ``name |`` prefixes of ``start`` off on a terminal."""

from __future__ import annotations

import datetime
import io

import pytest
from honcho.printer import Message

from coda_bridge.ops.group import ProcessGroup


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _line(monkeypatch: pytest.MonkeyPatch, no_color: str | None) -> str:
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    group = ProcessGroup(drain_timeout_sec=1)
    terminal = _Terminal()
    group._lines.printer.output = terminal
    group._lines.printer._colours_supported = True
    group._lines.printer.write(Message("line", "ready\n", datetime.datetime.now(), "jobs", "31"))
    return terminal.getvalue()


def test_prefixes_are_coloured_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "\x1b[" in _line(monkeypatch, None)


def test_no_color_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _line(monkeypatch, "1")
    assert "\x1b[" not in line
    assert "jobs" in line and "ready" in line
