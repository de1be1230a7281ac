"""systemd's notify protocol: datagrams to NOTIFY_SOCKET, READY=1 once approved, pings only while healthy."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coda_bridge.sdnotify import CycleNotifier, WatchdogPinger, notify, watchdog_interval_sec


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A bound datagram socket playing systemd, and the environment that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock, {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    sock.close()


def _pending(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    said = []
    try:
        while True:
            said.append(sock.recv(4096).decode())
    except BlockingIOError:
        return said
    finally:
        sock.settimeout(2)


def test_notify_sends_one_datagram_and_does_nothing_outside_systemd(systemd) -> None:
    sock, env = systemd
    assert notify("READY=1", env)
    assert sock.recv(4096) == b"READY=1"
    assert not notify("READY=1", {})


def test_an_abstract_socket_name_is_reached_too() -> None:
    name = f"coda-bridge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_the_ping_interval_is_half_the_watchdog_period_for_the_process_it_names() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert watchdog_interval_sec(env) == 15.0
    assert watchdog_interval_sec({**env, "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_sec({**env, "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_sec({**env, "WATCHDOG_PID": "1"}, main_only=False) == 15.0
    assert watchdog_interval_sec({"NOTIFY_SOCKET": "/run/x"}) is None
    assert watchdog_interval_sec({"WATCHDOG_USEC": "30000000"}) is None


def test_a_loop_says_ready_once_approved_then_pings_at_most_once_an_interval(systemd) -> None:
    sock, env = systemd
    approved = threading.Event()
    notifier = CycleNotifier(ready=approved.is_set, environ=env)
    notifier.cycle()  # given a first round the check does not approve (its Redis is down, say)
    assert _pending(sock) == ["WATCHDOG=1"]
    approved.set()
    notifier.cycle()
    notifier.cycle()
    assert _pending(sock) == ["READY=1"]  # ready once; no second ping within the interval
    deadline = time.monotonic() + 5
    while not (said := _pending(sock)) and time.monotonic() < deadline:
        notifier.cycle()
    assert said == ["WATCHDOG=1"]


def test_a_check_that_raises_is_not_ready(systemd) -> None:
    sock, env = systemd

    def broken() -> bool:
        raise ConnectionError("broker down")

    CycleNotifier(ready=broken, environ=env).cycle()
    assert "READY=1" not in _pending(sock)


def test_the_pinger_pings_while_healthy_and_is_silent_when_not(systemd) -> None:
    sock, env = systemd
    healthy, refused = threading.Event(), threading.Event()
    healthy.set()

    def check() -> bool:
        if not healthy.is_set():
            refused.set()
        return healthy.is_set()

    pinger = WatchdogPinger(check, 0.05, env).start()
    try:
        assert sock.recv(4096) == b"WATCHDOG=1"
        healthy.clear()
        assert refused.wait(2)  # the pinger has looked since: what it sent before is all there is
        _pending(sock)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
    finally:
        pinger.stop()
