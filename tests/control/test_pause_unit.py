"""The pause and device-state records, their reasons, the executor's status(), and the CLI's edges."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from coda_bridge.cli.main import main
from coda_bridge.control.hold import DeviceWatch
from coda_bridge.control.pause_book import MAX_PAUSE_SEC, NodeHold, PauseBook, parse_duration
from coda_bridge.device import DeviceState, read_device_state
from coda_bridge.devtools.localredis import free_port
from coda_bridge.errors import ConfigError

QPU = "qpu-pause"
#: A pause that ends by itself within the test.
PAUSE_SEC = 2.0


@pytest.fixture
def book(redis_url: str) -> PauseBook:
    return PauseBook(redis.Redis.from_url(redis_url), QPU)


@pytest.mark.parametrize(
    ("text", "seconds"), [("20s", 20), ("5m", 300), ("2h", 7200), ("7d", MAX_PAUSE_SEC), ("90", 90)]
)
def test_durations_take_seconds_minutes_hours_and_days(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "why"), [("8d", "at most 7 days"), ("0s", "longer than 0"), ("5x", "20s, 5m")]
)
def test_a_duration_out_of_bounds_or_malformed_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_duration(text)


def test_a_pause_is_kept_in_the_broker_with_its_note_and_ends_by_itself(book: PauseBook) -> None:
    # given a pause of 2 s with a note (longer than a busy machine stalls between these lines)
    record = book.pause(PAUSE_SEC, "  fridge\nwarm-up ")
    # then any reader sees it, the note on one line
    seen = PauseBook(redis.Redis.from_url(_url(book)), QPU)
    current = seen.current()
    assert current is not None and current.note == "fridge warm-up"
    assert current.until == pytest.approx(record.until)
    assert book.hold().reason == f"the node is paused until {record.as_dict()['until']}: fridge warm-up"
    # and the key expires at the end, so the node resumes with nothing running
    deadline = time.monotonic() + PAUSE_SEC + 5
    while book.current() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert book.current() is None
    # (Redis's own expiry may come a moment later than the record's end on a busy machine)
    while book.client.exists(f"coda-bridge:{QPU}:node:pause") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert book.client.exists(f"coda-bridge:{QPU}:node:pause") == 0


def _url(book: PauseBook) -> str:
    kwargs: dict[str, Any] = book.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_resume_ends_the_pause_and_says_whether_there_was_one(book: PauseBook) -> None:
    book.pause(60, "")
    assert book.resume() is True
    assert book.current() is None and book.hold().reason is None
    assert book.resume() is False


def test_other_qpus_on_the_same_broker_are_not_paused(book: PauseBook) -> None:
    book.pause(60, "only me")
    assert PauseBook(book.client, "qpu-other").hold() == NodeHold(None, None)


@pytest.mark.parametrize("state", list(DeviceState))
def test_only_idle_and_busy_devices_take_jobs(book: PauseBook, state: DeviceState) -> None:
    book.set_device_state(state, 5)
    hold = book.hold()
    assert hold.device is state
    expected = None if state in (DeviceState.IDLE, DeviceState.BUSY) else f"the device reports {state.value}"
    assert hold.reason == expected


def test_a_device_state_lapses_when_no_worker_renews_it(book: PauseBook) -> None:
    book.set_device_state(DeviceState.CALIBRATION, 0.2)
    deadline = time.monotonic() + 5
    while book.device_state() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert book.device_state() is None


class _Device:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def status(self) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class _AsyncDevice:
    async def status(self) -> str:
        return "maintenance"


@pytest.mark.parametrize(
    ("executor", "state"),
    [
        (object(), None),  # no status(): nothing to hold on
        (_Device("idle"), DeviceState.IDLE),
        (_Device(" Calibration "), DeviceState.CALIBRATION),
        (_Device(DeviceState.BUSY), DeviceState.BUSY),
        (_AsyncDevice(), DeviceState.MAINTENANCE),
        (_Device("warming up"), DeviceState.ERROR),  # not a state: not known to be ready
        (_Device(RuntimeError("no answer")), DeviceState.ERROR),
    ],
)
def test_an_executors_status_reads_as_a_device_state(executor: Any, state: DeviceState | None) -> None:
    assert read_device_state(executor) is state


@pytest.fixture
def node_env(clean_env: pytest.MonkeyPatch, redis_url: str) -> pytest.MonkeyPatch:
    clean_env.setenv("CODA_QPU_ID", QPU)
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    return clean_env


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_pause_and_resume_from_the_command_line(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code, out, _ = run_main(capsys, "pause", "--note", "calibration run")
    assert code == 0 and out.startswith(f"Paused {QPU} until ")
    current = PauseBook(redis.Redis.from_url(redis_url), QPU).current()
    assert current is not None and current.note == "calibration run"
    assert current.until - current.since == pytest.approx(300)  # 5 minutes by default
    code, out, _ = run_main(capsys, "resume")
    assert code == 0 and out == f"Resumed {QPU}.\n"


def test_a_bad_duration_is_a_usage_error_and_pauses_nothing(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code, _, err = run_main(capsys, "pause", "--for", "30d")
    assert code == 2 and "at most 7 days" in err and "Traceback" not in err
    assert PauseBook(redis.Redis.from_url(redis_url), QPU).current() is None


def test_pause_with_the_broker_down_is_one_line_naming_it(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node_env.setenv("CODA_BROKER_URL", f"redis://:s3cr3t@127.0.0.1:{free_port()}/0")
    code, _, err = run_main(capsys, "pause", "--for", "1m")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: the broker at redis://127.0.0.1")
    assert "does not answer" in err and "s3cr3t" not in err


class _HangingDevice:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def status(self) -> str:
        self.calls += 1
        self.release.wait(30)
        return "idle"


def test_a_status_that_hangs_reads_as_error_and_is_not_asked_again_meanwhile(book: PauseBook) -> None:
    # given an executor whose status() never answers
    device = _HangingDevice()
    watch = DeviceWatch(lambda: device, book, 5.0, timeout_sec=0.2)
    try:
        # when the worker asks twice
        started = time.monotonic()
        first, second = watch.poll(), watch.poll()
        # then both read as error within the bound, and the hung call was not repeated
        assert first is second is DeviceState.ERROR
        assert time.monotonic() - started < 2
        assert device.calls == 1
        assert book.device_state() is DeviceState.ERROR
    finally:
        device.release.set()
