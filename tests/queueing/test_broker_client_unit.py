"""The broker URL: a Redis URL or a Sentinel URL (``redis+sentinel://``), its errors without its secrets."""

from __future__ import annotations

import pytest
import redis

from coda_bridge.queueing.broker_client import (
    SentinelTarget,
    broker_client,
    check_broker_url,
    parse_sentinel_url,
    sentinel_primary,
)

SECRET = "s3cr3t-pw"


def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials() -> None:
    url = (
        f"redis+sentinel://:{SECRET}@s1.lab:26379,s2.lab:26380,[::1]:26381,s4.lab/coda-broker/3"
        "?sentinel_password=other"
    )

    target = parse_sentinel_url(url)

    assert target == SentinelTarget(
        sentinels=(("s1.lab", 26379), ("s2.lab", 26380), ("::1", 26381), ("s4.lab", 26379)),
        service="coda-broker",
        db=3,
        password=SECRET,
        sentinel_password="other",
    )
    assert SECRET not in repr(target) and "other" not in repr(target)


def test_the_database_defaults_to_0_and_a_user_is_kept() -> None:
    target = parse_sentinel_url("redis+sentinel://node:pw@127.0.0.1:26379/mymaster")

    assert (target.db, target.username, target.password) == (0, "node", "pw")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis+sentinel://:{SECRET}@h1:26379", "/service"),
        (f"redis+sentinel://:{SECRET}@h1:26379/a/b/c", "/service"),
        (f"redis+sentinel://:{SECRET}@h1:port/mymaster", "valid port"),
        (f"redis+sentinel://:{SECRET}@/mymaster", "no sentinel address"),
        (f"redis+sentinel://:{SECRET}@h1/mymaster/zero", "must be a number"),
        (f"redis+sentinel://:{SECRET}@h1/mymaster?password={SECRET}", "unknown option"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_its_secret(url: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_broker_url(url)

    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_plain_redis_url_is_checked_and_opened_as_redis_py_does() -> None:
    check_broker_url("redis://127.0.0.1:6379/2")
    with pytest.raises(ValueError):
        check_broker_url("localhost:6379")

    client = broker_client("redis://127.0.0.1:6379/2", socket_timeout=1)

    assert client.connection_pool.connection_kwargs["db"] == 2
    assert sentinel_primary(client) is None


def test_a_sentinel_url_gives_a_client_of_the_named_service_with_the_options() -> None:
    client = broker_client(
        f"redis+sentinel://:{SECRET}@127.0.0.1:1,127.0.0.1:2/coda-broker/1", socket_timeout=1.5
    )

    pool = client.connection_pool
    assert pool.service_name == "coda-broker"
    assert pool.connection_kwargs["db"] == 1
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    with pytest.raises(redis.ConnectionError):  # no sentinel listens there: no primary
        sentinel_primary(client)


def test_tls_to_sentinels_is_refused_rather_than_taken_for_something_else() -> None:
    with pytest.raises(ValueError):
        check_broker_url(f"rediss+sentinel://:{SECRET}@s1:26379/coda-broker/0")
