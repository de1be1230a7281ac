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

from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelManagedConnection

from ..urls import (
    SENTINEL_SCHEME,
    SentinelTarget,
    check_broker_url,
    is_sentinel_url,
    parse_sentinel_url,
)
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

#: Timeouts of the connections to the sentinels: a dead sentinel must not hold back asking the next one.
SENTINEL_TIMEOUT_SEC = 2.0


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
