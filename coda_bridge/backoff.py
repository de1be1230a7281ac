"""Exponential backoff for the node's own wait-and-retry loops (dramatiq's actors use its Retries)."""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Delays that start at ``start_sec`` and double up to ``max_sec``; :meth:`reset` after a success."""

    def __init__(self, start_sec: float, max_sec: float, *, factor: float = 2.0) -> None:
        if not 0 < start_sec <= max_sec:
            raise ValueError(f"backoff needs 0 < start_sec <= max_sec, got {start_sec} and {max_sec}")
        self.start_sec = start_sec
        self.max_sec = max_sec
        self.factor = factor
        self._next = start_sec

    def next_delay(self) -> float:
        """The delay to wait now; the one after it is longer, up to the maximum."""
        delay = self._next
        self._next = min(self._next * self.factor, self.max_sec)
        return delay

    def reset(self) -> None:
        self._next = self.start_sec
