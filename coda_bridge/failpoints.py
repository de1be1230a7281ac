"""Named failpoints for crash tests: make a process die or stall at an exact step.

Off unless ``CODA_FAILPOINTS`` is set, e.g. ``bridge.before_ack=exit@3``
(exit as if killed -9 on the third pass) or ``delivery.after_post=sleep:5``;
``clock.skew_sec=600`` sets this host's clock 10 minutes fast as the node
reads it (:func:`clock_skew_sec`).
Production code marks the steps where a crash matters; the fault tests
choose which one fires.
"""

from __future__ import annotations

import logging
import os
import threading
import time

__all__ = ["clock_skew_sec", "failpoint"]

logger = logging.getLogger(__name__)

#: Exit status of a failpoint exit: what a shell shows for SIGKILL.
KILLED_STATUS = 137

_lock = threading.Lock()
_passes: dict[str, int] = {}


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        points[name] = (action, int(nth or 1))
    return points


_POINTS = _parse(os.environ.get("CODA_FAILPOINTS", ""))


def clock_skew_sec() -> float:
    """Seconds the ``clock.skew_sec`` failpoint adds to this host's clock (0 unless set)."""
    action, _ = _POINTS.get("clock.skew_sec", ("0", 1))
    return float(action)


def failpoint(name: str) -> None:
    """Fire the failpoint ``name`` if one is configured for this pass."""
    if not _POINTS or name not in _POINTS:
        return
    action, nth = _POINTS[name]
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        count = _passes[name]
    if count != nth:
        return
    logger.warning("Failpoint %s fired: %s.", name, action)
    if action == "exit":
        os._exit(KILLED_STATUS)
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
