"""systemd's notify protocol, spoken directly: READY=1 once a process is ready, WATCHDOG=1 while it works.

The protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines to the
Unix socket named by ``$NOTIFY_SOCKET`` (``@`` starts an abstract name);
``$WATCHDOG_USEC`` is how often systemd wants a ``WATCHDOG=1``
(sd_watchdog_enabled(3)), and a unit with ``WatchdogSec=`` kills a process
whose pings stop.  Without ``NOTIFY_SOCKET`` (not under a ``Type=notify``
unit) everything here does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["CycleNotifier", "WatchdogPinger", "notify", "watchdog_interval_sec"]

NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"
WATCHDOG_USEC_VARIABLE = "WATCHDOG_USEC"
WATCHDOG_PID_VARIABLE = "WATCHDOG_PID"
READY = "READY=1"
WATCHDOG = "WATCHDOG=1"
STOPPING = "STOPPING=1"
#: Pings per watchdog period: sd_watchdog_enabled(3) advises at least two.
PINGS_PER_PERIOD = 2


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` to systemd; False when not under a notify unit or the socket is gone."""
    address = environ.get(NOTIFY_SOCKET_VARIABLE)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval_sec(environ: Mapping[str, str] = os.environ, *, main_only: bool = True) -> float | None:
    """How often to ping (half the watchdog period), or None when no watchdog is asked of this process.

    ``main_only``: only when ``$WATCHDOG_PID`` (if set) is this process, as
    sd_watchdog_enabled(3) says; a unit with ``NotifyAccess=all`` takes
    pings from its other processes too.
    """
    usec = environ.get(WATCHDOG_USEC_VARIABLE, "")
    if not environ.get(NOTIFY_SOCKET_VARIABLE) or not usec.isdigit() or int(usec) <= 0:
        return None
    pid = environ.get(WATCHDOG_PID_VARIABLE)
    if main_only and pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / PINGS_PER_PERIOD


class CycleNotifier:
    """For a loop that does the process's work: READY=1 after the first round that ``ready()`` approves,
    then a watchdog ping per round.

    Pings are sent from the loop itself (at most one per interval), so a
    loop that hangs stops them, and systemd fails the process.
    """

    def __init__(
        self, ready: Callable[[], bool] = lambda: True, environ: Mapping[str, str] = os.environ
    ) -> None:
        self.environ = environ
        self.interval_sec = watchdog_interval_sec(environ)
        self.ready_check = ready
        self.ready = False
        self._last_ping = 0.0

    def cycle(self) -> None:
        if not self.ready and self._approved():
            self.ready = True
            notify(READY, self.environ)
        now = time.monotonic()
        if self.interval_sec is not None and now - self._last_ping >= self.interval_sec:
            self._last_ping = now
            notify(WATCHDOG, self.environ)

    def _approved(self) -> bool:
        try:
            return bool(self.ready_check())
        except Exception:  # a check that cannot tell (its Redis is down): not ready yet
            return False


class WatchdogPinger:
    """A thread that pings while ``healthy()`` holds; silent when it does not (systemd then fails us)."""

    def __init__(
        self, healthy: Callable[[], bool], interval_sec: float, environ: Mapping[str, str] = os.environ
    ):
        self.healthy = healthy
        self.interval_sec = interval_sec
        self.environ = environ
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)

    def start(self) -> WatchdogPinger:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                well = self.healthy()
            except Exception:  # a broken check means no ping: systemd decides
                well = False
            if well:
                notify(WATCHDOG, self.environ)
            self._stop.wait(self.interval_sec)
