"""What a device says of itself: an executor's optional ``status()``, as a :class:`DeviceState`.

The states are QDMI's (the Munich quantum device interface).  Only ``idle``
and ``busy`` let jobs start; any other state holds them until it changes.
Outside the executors package: the bridge reads the state without loading
any executor code.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from .logs import mask

__all__ = ["STATUS_TIMEOUT_SEC", "DeviceState", "read_device_state"]

logger = logging.getLogger(__name__)

#: Longest wait for an executor's ``status()``; one that takes longer reads as ``error``.
STATUS_TIMEOUT_SEC = 10.0


class DeviceState(enum.StrEnum):
    """A device's state as its executor's ``status()`` returns it (the string or the member)."""

    IDLE = "idle"
    BUSY = "busy"
    ERROR = "error"
    MAINTENANCE = "maintenance"
    CALIBRATION = "calibration"

    @property
    def takes_jobs(self) -> bool:
        """Whether a job may start on the device in this state."""
        return self in (DeviceState.IDLE, DeviceState.BUSY)


def read_device_state(executor: Any) -> DeviceState | None:
    """``executor.status()`` as a :class:`DeviceState`; ``None`` when the executor has no ``status``.

    A ``status()`` that raises, or answers something that is not one of the
    states, reads as ``error`` (logged): a device that cannot say it is
    ready is not given jobs.
    """
    from .executors.base import resolve_awaitable  # noqa: PLC0415 - the bridge process loads no executor code

    status = getattr(executor, "status", None)
    if not callable(status):
        return None
    try:
        answer = resolve_awaitable(status(), timeout_sec=STATUS_TIMEOUT_SEC)
    except Exception as exc:  # the backend's own code: any failure means "not known to be ready"
        logger.warning("Executor status() failed (%s: %s); device state is error.", type(exc).__name__, exc)
        return DeviceState.ERROR
    value = answer.value if isinstance(answer, DeviceState) else str(answer).strip().lower()
    try:
        return DeviceState(value)
    except ValueError:
        logger.warning(
            "Executor status() answered %s, not one of %s; device state is error.",
            mask(repr(answer))[:100],
            ", ".join(s.value for s in DeviceState),
        )
        return DeviceState.ERROR
