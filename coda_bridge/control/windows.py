"""Recurring maintenance windows of a site (UTC): ``"sun 02:00-04:00"``, ``"mon-fri 12:00-12:30"``.

A window is one or more weekdays (``mon``..``sun``; a list ``mon,wed`` or a
range ``mon-fri``; ``daily``) and a time range ``HH:MM[:SS]-HH:MM[:SS]`` in
UTC.  A range whose end is not after its start runs past midnight into the
next day.  Inside a window the node is paused (:mod:`~coda_bridge.control.maintenance`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["ActiveWindow", "Window", "active_window", "next_window", "parse_window"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_WINDOW = re.compile(rf"^\s*([a-z,\-]+)\s+{_TIME}\s*-\s*{_TIME}\s*$")
_DAY_SEC = 86_400


@dataclass(frozen=True)
class Window:
    """Weekdays (0 = Monday) and a start and end as seconds after midnight UTC."""

    text: str
    days: frozenset[int]
    start_sec: int
    end_sec: int

    @property
    def length_sec(self) -> int:
        return (self.end_sec - self.start_sec) % _DAY_SEC or _DAY_SEC


@dataclass(frozen=True)
class ActiveWindow:
    """A window in force now: which, and its start and end (Unix seconds)."""

    window: Window
    start: float
    end: float


def _days(text: str) -> frozenset[int]:
    if text == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"unknown weekday in {text!r}: use mon, tue, wed, thu, fri, sat, sun or daily")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def _seconds(hours: str, minutes: str, seconds: str | None, text: str) -> int:
    h, m, s = int(hours), int(minutes), int(seconds or 0)
    if h > 24 or m > 59 or s > 59 or (h == 24 and (m or s)):
        raise ValueError(f"time out of range in {text!r}")
    return h * 3600 + m * 60 + s


def parse_window(text: str) -> Window:
    """One window from its text; a :class:`ValueError` saying what is wrong."""
    match = _WINDOW.match(text.lower())
    if not match:
        raise ValueError(f"maintenance window {text!r} is not 'DAYS HH:MM-HH:MM' (e.g. 'sun 02:00-04:00')")
    days = _days(match.group(1))
    start = _seconds(match.group(2), match.group(3), match.group(4), text)
    end = _seconds(match.group(5), match.group(6), match.group(7), text)
    if start == end:
        raise ValueError(f"maintenance window {text!r} is empty (start equals end)")
    return Window(text.strip(), days, start % _DAY_SEC, end % _DAY_SEC if end != _DAY_SEC else _DAY_SEC)


def active_window(windows: Iterable[Window], now: float) -> ActiveWindow | None:
    """The window in force at ``now`` (the one that started last, if several overlap), or ``None``."""
    moment = datetime.fromtimestamp(now, UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    found: ActiveWindow | None = None
    for window in windows:
        for back in (0, 1):  # a window that began yesterday may run past midnight
            day = midnight - timedelta(days=back)
            if day.weekday() not in window.days:
                continue
            start = day.timestamp() + window.start_sec
            end = start + window.length_sec
            if start <= now < end and (found is None or start > found.start):
                found = ActiveWindow(window, start, end)
    return found


def next_window(windows: Iterable[Window], now: float) -> ActiveWindow | None:
    """The window that starts next after ``now`` (within a week), for the status page; ``None``: none."""
    midnight = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    found: ActiveWindow | None = None
    for window in windows:
        for ahead in range(8):  # today's may have begun already: a week and a day covers every weekday
            day = midnight + timedelta(days=ahead)
            start = day.timestamp() + window.start_sec
            if day.weekday() in window.days and start > now and (found is None or start < found.start):
                found = ActiveWindow(window, start, start + window.length_sec)
                break
    return found
