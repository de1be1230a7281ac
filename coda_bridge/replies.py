"""Redis replies as text, whichever way a client decodes them."""

from __future__ import annotations

from typing import Any

__all__ = ["as_text"]


def as_text(value: Any) -> str | None:
    """``bytes`` decoded, ``None`` kept, anything else as ``str``."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
