"""The cloud's time as this node sees it: the offset read from the cloud's ``Date`` headers.

Every answer of the cloud (connect, heartbeat, result) carries a ``Date``;
its difference from this host's clock, taken at the middle of the request,
is the offset.  Tokens are signed on the cloud's time once the offset is
larger than the ``Date`` header's one-second resolution, the way AWS SDKs
correct clock skew, so a host clock that is minutes off still has its
heartbeats and results accepted.  The offset is kept in the node's shared
state, so a process that has not talked to the cloud yet signs right on
its first request.  The process that measures an offset past
:data:`SKEW_WARNING_SEC` logs it once.
"""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
from collections.abc import Callable

import redis

from ..failpoints import clock_skew_sec
from ..state.node_state import NodeState

__all__ = ["CORRECT_ABOVE_SEC", "SKEW_WARNING_SEC", "CloudClock", "host_time", "parse_http_date"]

logger = logging.getLogger(__name__)

#: Offsets up to this are the ``Date`` header's resolution, not a wrong clock: signing keeps the host's time.
CORRECT_ABOVE_SEC = 2.0
#: An offset past this is logged (once, and once again when it is back under).
SKEW_WARNING_SEC = 5.0
#: How often a process reads the offset the node's other processes measured.
SHARED_REFRESH_SEC = 5.0
#: A measurement this close to the shared one is not written again.
SHARED_WRITE_DELTA_SEC = 1.0
#: The ``Date`` header truncates to whole seconds: on average the cloud's time was half a second later.
DATE_RESOLUTION_SEC = 1.0


def host_time() -> float:
    """This host's clock as the node reads it: the one time function tokens are signed on."""
    return time.time() + clock_skew_sec()


def parse_http_date(value: str | None) -> float | None:
    """A ``Date`` header as Unix seconds, or ``None`` when there is none or it is not a date."""
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    stamp = moment.timestamp()
    return stamp if math.isfinite(stamp) else None


class CloudClock:
    """The cloud clock's offset from this host's, measured here or by the node's other processes.

    ``state`` is the node's shared state (``None``: this process only, as
    at connect, before the node is known); ``local`` is this host's clock.
    """

    def __init__(self, state: NodeState | None = None, local: Callable[[], float] = host_time) -> None:
        self.state = state
        self.local = local
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._offset_sec = 0.0
        self._refreshed_at = -math.inf
        self._shared_sec: float | None = None
        self._warned = False
        #: Whether an answer of the cloud told this process its time.
        self.measured = False

    @property
    def offset_sec(self) -> float:
        """The cloud's clock minus this host's, in seconds (0 until measured)."""
        self._refresh()
        return self._offset_sec

    def now(self) -> float:
        """The cloud's time, as well as the node knows it: what tokens are signed on."""
        offset = self.offset_sec
        return self.local() + (offset if abs(offset) > CORRECT_ABOVE_SEC else 0.0)

    def describe(self) -> str:
        """This host's clock against the cloud's, in words, for a message."""
        offset = self.offset_sec
        if abs(offset) <= CORRECT_ABOVE_SEC:
            return "the cloud told no time that corrects it: check this host's time (NTP)"
        side = "ahead of" if offset < 0 else "behind"
        return f"this host's clock is {abs(offset):.0f} s {side} the cloud's; tokens are signed on its time"

    def observe(self, date_header: str | None, sent_at: float, received_at: float) -> None:
        """Take the offset from an answer's ``Date``; the request's times are :attr:`local` ones."""
        cloud = parse_http_date(date_header)
        if cloud is None:
            return
        self.measured = True
        self._set(cloud + DATE_RESOLUTION_SEC / 2 - (sent_at + received_at) / 2, share=True)

    def _set(self, offset: float, *, share: bool) -> None:
        """Take ``offset``; one measured here is logged when it crosses the warning line, and shared."""
        size = abs(offset)
        with self._lock:
            self._offset_sec = offset
            warn = share and not self._warned and size > SKEW_WARNING_SEC
            settled = share and self._warned and size <= CORRECT_ABOVE_SEC
            # an offset another process measured was logged there: this one only remembers it
            self._warned = (self._warned or size > SKEW_WARNING_SEC) and size > CORRECT_ABOVE_SEC
        if warn:
            logger.warning(
                "This host's clock is %.0f s %s the cloud's (its Date header); tokens are signed on the "
                "cloud's time meanwhile. Fix the host's time (NTP: `timedatectl set-ntp true`).",
                size,
                "ahead of" if offset < 0 else "behind",
            )
        elif settled:
            logger.info("This host's clock agrees with the cloud's again (offset %+.1f s).", offset)
        shared = self._shared_sec
        if (
            not share
            or self.state is None
            or (shared is not None and abs(shared - offset) < SHARED_WRITE_DELTA_SEC)
        ):
            return
        try:
            self.state.set_clock_offset(offset)
            self._shared_sec = offset
        except redis.RedisError as exc:  # this process still signs right; the others measure their own
            logger.debug("Clock offset not shared (%s).", exc)

    def _refresh(self) -> None:
        """Read the shared offset every :data:`SHARED_REFRESH_SEC`; a silent broker leaves ours.

        Threads that need it meanwhile wait for the read rather than sign on an offset not read yet.
        """
        if self.state is None or time.monotonic() - self._refreshed_at < SHARED_REFRESH_SEC:
            return
        with self._refreshing:
            if time.monotonic() - self._refreshed_at < SHARED_REFRESH_SEC:
                return  # another thread just read it
            try:
                shared = self.state.clock_offset()
            except redis.RedisError:
                shared = None
            self._refreshed_at = time.monotonic()
            if shared is not None and shared[0] != self._shared_sec:
                self._shared_sec = shared[0]
                self._set(shared[0], share=False)
