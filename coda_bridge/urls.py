"""URLs as they may be shown: never a password (a Redis URL carries it in its user info or query)."""

from __future__ import annotations

from urllib.parse import parse_qsl

__all__ = ["safe_url"]

#: Query parameters of a URL whose values are never shown (redis-py takes ``?password=``).
_SECRET_QUERY = ("pass", "token", "secret", "key", "user")


def safe_url(url: str) -> str:
    """``url`` as it may be shown: no user info (Redis URLs carry passwords there), no secret query value.

    Works on malformed URLs too: they are the ones error messages name.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.rsplit("@", 1)[-1]  # a password may itself hold an "@"
    base, question, query = rest.partition("?")
    if question:
        shown = [
            f"{name}=***" if any(word in name.lower() for word in _SECRET_QUERY) else f"{name}={value}"
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        rest = f"{base}?{'&'.join(shown)}"
    return f"{scheme}{sep}{rest}"
