"""The simulator's refusal: :class:`StoreError`, carrying the HTTP status to answer with.

Raised by the store and by the routes alike; the app turns it into a JSON error reply.
"""

from __future__ import annotations

__all__ = ["StoreError"]


class StoreError(Exception):
    """A request the state cannot honour; ``status`` is the HTTP answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
