"""Redis URLs: read (a broker may be reached through Sentinel) and shown (never with a password)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from redis.connection import parse_url

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelTarget",
    "check_broker_url",
    "is_sentinel_url",
    "parse_sentinel_url",
    "safe_url",
]

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


#: The scheme of a broker reached through Redis Sentinel.
SENTINEL_SCHEME = "redis+sentinel"
#: Where a sentinel listens when its URL names no port.
SENTINEL_DEFAULT_PORT = 26379
#: Query parameters of a Sentinel URL, and what they set.
_SENTINEL_QUERY = ("sentinel_password", "sentinel_username")


@dataclass(frozen=True)
class SentinelTarget:
    """What a Sentinel URL names (its ``repr`` hides the passwords)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"SentinelTarget({hosts}/{self.service}/{self.db})"


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError("a sentinel address has no host")
    if not port_text:
        return host, SENTINEL_DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"sentinel {host} has no valid port")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, service, database and credentials of a Sentinel URL; ValueError (no secret in it)."""
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    addresses = tuple(_host_port(item.strip()) for item in hosts.split(",") if item.strip())
    if not addresses:
        raise ValueError("no sentinel address (host:port, comma-separated)")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError("the path must be /service or /service/db (the name the sentinels monitor)")
    db_text = parts[1] if len(parts) == 2 else "0"
    if not db_text.isdigit():
        raise ValueError("the database after the service name must be a number")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_SENTINEL_QUERY))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_SENTINEL_QUERY)}")
    return SentinelTarget(
        sentinels=addresses,
        service=unquote(parts[0]),
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def check_broker_url(url: str) -> None:
    """ValueError when ``url`` is neither a Redis URL redis-py reads nor a valid Sentinel URL."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
    else:
        parse_url(url)
