"""Where results and JWTs may go: the cloud's own host, or one the site allows."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["callback_allowed", "callback_refusal"]


def callback_allowed(callback_url: str, webapp_url: str, allowed_hosts: list[str]) -> bool:
    """Results go only to the cloud's own host, unless the site allows more."""
    host = (urlsplit(callback_url).hostname or "").lower()
    if not host:
        return False
    own = (urlsplit(webapp_url).hostname or "").lower()
    return host == own or host in {h.lower() for h in allowed_hosts}


def callback_refusal(callback_url: str, webapp_url: str, allowed_hosts: list[str]) -> str | None:
    """Why results of a job may not go to its callback URL, or ``None`` when they may."""
    if callback_allowed(callback_url, webapp_url, allowed_hosts):
        return None
    host = urlsplit(callback_url).hostname
    return f"callback host {host!r} is not the cloud's host; allowed_callback_hosts can allow it"
