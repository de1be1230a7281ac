"""Maintenance windows: their text, which one is in force, and opening one once with its calibration hook."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from coda_bridge.control.maintenance import MaintenanceWindows, run_hook
from coda_bridge.control.pause_book import PauseBook
from coda_bridge.control.windows import active_window, next_window, parse_window

QPU = "qpu-windows"
#: Monday 7 December 2026, 12:10 UTC.
MONDAY_NOON = datetime(2026, 12, 7, 12, 10, tzinfo=UTC).timestamp()


def _a_monday_noon_ahead() -> float:
    """12:10 UTC on a Monday still to come: the pause book reads the real clock, so a window the tests
    open must not be over by then (a fixed date passes only until its window ends)."""
    today = datetime.now(UTC).date()
    monday = today + timedelta(days=(7 - today.weekday()) % 7 or 7)
    return datetime(monday.year, monday.month, monday.day, 12, 10, tzinfo=UTC).timestamp()


#: The moment the tests of opening a window are at: 10 minutes into a mon-fri 12:00-12:30 window.
WINDOW_NOW = _a_monday_noon_ahead()


def at(day: int, hour: int, minute: int = 0) -> float:
    """A moment of the week of 7 December 2026 (day 7 is a Monday)."""
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "moment", "inside"),
    [
        ("mon-fri 12:00-12:30", at(7, 12, 10), True),
        ("mon-fri 12:00-12:30", at(7, 12, 30), False),  # the end is outside
        ("mon-fri 12:00-12:30", at(12, 12, 10), False),  # a Saturday
        ("sat,sun 23:00-01:00", at(14, 0, 30), True),  # Sunday's window, past midnight into Monday
        ("sat,sun 23:00-01:00", at(8, 0, 30), False),  # Monday has no window to run into Tuesday
        ("fri-mon 10:00-11:00", at(7, 10, 0), True),  # a range through the weekend
        ("daily 00:00-24:00", at(9, 17, 45), True),
        ("Sun 02:00:30-02:00:45", at(13, 2, 0) + 40, True),  # seconds, any case
    ],
)
def test_a_window_is_in_force_on_its_days_between_its_times(text: str, moment: float, inside: bool) -> None:
    found = active_window([parse_window(text)], moment)
    assert (found is not None) is inside
    if found is not None:
        assert found.start <= moment < found.end


def test_the_window_in_force_has_its_start_and_end() -> None:
    found = active_window([parse_window("sat,sun 23:00-01:00")], at(14, 0, 30))
    assert found is not None
    assert (found.start, found.end) == (at(13, 23), at(14, 1))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("funday 10:00-11:00", "unknown weekday"),
        ("mon 10:00", "is not 'DAYS HH:MM-HH:MM'"),
        ("mon 25:00-26:00", "out of range"),
        ("mon 10:00-10:00", "empty"),
    ],
)
def test_a_malformed_window_says_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_window(text)


class Calibrating:
    def __init__(self, fail: bool = False, hang: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.hang = hang
        self.release = threading.Event()

    def calibrate(self) -> None:
        self.calls += 1
        if self.hang:
            self.release.wait(30)
        if self.fail:
            raise RuntimeError("mixer drift")


def windows(book: PauseBook, executor: Any, **options: Any) -> MaintenanceWindows:
    kwargs: dict[str, Any] = {
        "command": None,
        "timeout_sec": 5.0,
        "resume_after_hook": False,
        "concurrency": 1,
    }
    kwargs.update(options)
    slots = threading.BoundedSemaphore(1)
    return MaintenanceWindows(["mon-fri 12:00-12:30"], book, lambda: executor, lambda: slots, **kwargs)


@pytest.fixture
def book(redis_url: str) -> PauseBook:
    return PauseBook(redis.Redis.from_url(redis_url), QPU)


def test_a_window_pauses_the_node_until_its_end_and_calibrates_once(
    book: PauseBook, caplog: pytest.LogCaptureFixture
) -> None:
    executor = Calibrating()
    first, second = windows(book, executor), windows(book, executor)  # two jobs workers
    caplog.set_level("INFO")
    # when both see the window in force
    opened = first.check(WINDOW_NOW)
    again = second.check(WINDOW_NOW + 1)
    # then one opened it: the node is paused to the window's end, with the window as the note
    assert opened is not None and again is None
    pause = book.current()
    assert pause is not None and pause.note == "maintenance window mon-fri 12:00-12:30"
    assert pause.until == WINDOW_NOW + 20 * 60
    # and the hook ran once, its outcome logged
    assert executor.calls == 1
    assert "Calibration of window mon-fri 12:00-12:30: calibrate() finished" in caplog.text


def test_a_resume_within_the_window_is_not_undone(book: PauseBook) -> None:
    maintenance = windows(book, Calibrating())
    maintenance.check(WINDOW_NOW)
    book.resume()
    assert maintenance.check(WINDOW_NOW + 5) is None
    assert book.current() is None


def test_with_hook_end_the_node_resumes_once_the_calibration_succeeded(book: PauseBook) -> None:
    windows(book, Calibrating(), resume_after_hook=True).check(WINDOW_NOW)
    assert book.current() is None


def test_a_failed_calibration_keeps_the_pause_and_says_why(
    book: PauseBook, caplog: pytest.LogCaptureFixture
) -> None:
    windows(book, Calibrating(fail=True), resume_after_hook=True).check(WINDOW_NOW)
    assert book.current() is not None
    assert "calibrate() failed: RuntimeError: mixer drift" in caplog.text


def test_a_hook_is_bounded_in_time() -> None:
    executor = Calibrating(hang=True)
    ok, outcome = run_hook(executor, None, 0.2)
    executor.release.set()
    assert not ok and outcome.startswith("calibrate() did not finish within 0.2 s")


def test_without_calibrate_the_command_runs_and_its_failure_is_reported() -> None:
    assert run_hook(object(), f"{sys.executable} -c pass", 10) == (
        True,
        f"calibration command {sys.executable} finished",
    )
    ok, outcome = run_hook(object(), f"{sys.executable} -c 'import sys; sys.exit(\"cryostat busy\")'", 10)
    assert not ok and outcome.endswith("exited 1: cryostat busy")
    ok, outcome = run_hook(object(), f"{sys.executable} -c 'import time; time.sleep(5)'", 0.3)
    assert not ok and "did not finish within 0.3 s (killed)" in outcome
    assert run_hook(object(), None, 1)[0] is True  # no hook at all: only the pause


def test_a_malformed_window_in_the_settings_stops_with_exit_78(clean_env: pytest.MonkeyPatch) -> None:
    from coda_bridge.errors import ConfigError
    from coda_bridge.settings import load_settings

    clean_env.setenv("CODA_MAINTENANCE_WINDOWS", "sun 02:00-04:00; funday 10:00-11:00")
    with pytest.raises(ConfigError, match="unknown weekday in 'funday'") as raised:
        load_settings()
    assert getattr(raised.value, "exit_code", None) == 78
    clean_env.setenv("CODA_MAINTENANCE_WINDOWS", '["sat,sun 23:00-01:00"]')
    assert load_settings().maintenance_windows == ["sat,sun 23:00-01:00"]


@pytest.mark.parametrize(
    ("texts", "moment", "start", "end"),
    [
        (["mon-fri 12:00-12:30"], at(7, 12, 10), at(8, 12), at(8, 12, 30)),  # inside today's: tomorrow's
        (["mon-fri 12:00-12:30"], at(7, 11, 59), at(7, 12), at(7, 12, 30)),
        (["mon-fri 12:00-12:30"], at(11, 13), at(14, 12), at(14, 12, 30)),  # friday afternoon: monday
        (["sun 23:00-01:00", "daily 06:00-06:10"], at(13, 12), at(13, 23), at(14, 1)),
        (["mon 12:00-12:30"], at(7, 12, 30), at(14, 12), at(14, 12, 30)),  # a week on
    ],
)
def test_next_window_is_the_soonest_start_after_now(
    texts: list[str], moment: float, start: float, end: float
) -> None:
    upcoming = next_window([parse_window(text) for text in texts], moment)
    assert upcoming is not None
    assert (upcoming.start, upcoming.end) == (start, end)


def test_no_next_window_without_windows() -> None:
    assert next_window([], MONDAY_NOON) is None
