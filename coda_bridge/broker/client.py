"""Clients of the broker Redis: one Redis URL, or the primary that Redis Sentinel names.

``broker_url`` is a ``redis://``/``rediss://``/``unix://`` URL as redis-py
reads it, or a Sentinel URL::

    redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/service[/db][?sentinel_password=...]

(the form of flask-redis-sentinel and of redis-py users' deployments: one
string carries the sentinels, the service name and the database, so every
process and every host gets the same broker from one setting).  The
password in the user info is the primary's (and the replicas'); the
sentinels' own, if they have one, is ``sentinel_password`` (and
``sentinel_username``).  A Sentinel client asks the sentinels for the
primary on each new connection; after a failover redis-py drops the
connections to a primary that stopped answering or that answers
``READONLY`` (it was demoted), and the next command reaches the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelManagedConnection

from .refusal import refusal

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelTarget",
    "broker_client",
    "check_broker_url",
    "is_sentinel_url",
    "parse_sentinel_url",
    "sentinel_primary",
]

#: The scheme of a broker reached through Redis Sentinel.
SENTINEL_SCHEME = "redis+sentinel"
#: Where a sentinel listens when its URL names no port.
SENTINEL_DEFAULT_PORT = 26379
#: Timeouts of the connections to the sentinels: a dead sentinel must not hold back asking the next one.
SENTINEL_TIMEOUT_SEC = 2.0
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


class _PrimaryConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection; Redis 6.2's ``READONLY`` inside a script is a demotion too.

    redis-py drops a connection whose primary answers ``READONLY`` so the next one asks the sentinels
    again; Redis 6.2 reports the same refusal from a Lua script (dramatiq's dispatch) as ``ERR Error
    running script ... -READONLY``, which it would pass on as an error reply, leaving the connection on
    the demoted primary.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if self.connection_pool.is_master and (refusal(exc) or "").startswith("READONLY"):
                self.disconnect()
                raise redis.ConnectionError("the broker's primary is now a replica") from None
            raise


def broker_client(url: str, **options: Any) -> redis.Redis:
    """A client of the broker at ``url`` (``options`` as redis-py's: timeouts, retry, decode_responses)."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_SEC,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SEC,
    }
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    if target.sentinel_username:
        sentinel_options["username"] = target.sentinel_username
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(
        target.service,
        connection_class=_PrimaryConnection,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def sentinel_primary(client: redis.Redis) -> tuple[str, int] | None:
    """The primary the sentinels name for a :func:`broker_client` of a Sentinel URL; None for a plain one.

    Raises redis-py's ``MasterNotFoundError`` (a ``ConnectionError``) when no sentinel names one.
    """
    pool = client.connection_pool
    discover = getattr(pool, "get_master_address", None)
    if discover is None:
        return None
    host, port = discover()
    return str(host), int(port)
