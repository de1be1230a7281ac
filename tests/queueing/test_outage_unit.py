"""The broker not answering is one line naming the fix: the bridge's error, and dramatiq's consumer lines."""

from __future__ import annotations

import logging

import redis

from coda_bridge.queueing.broker_client import broker_client
from coda_bridge.queueing.outage import FIX, BrokerOutageLog, broker_unavailable, shown_broker

CONSUMER = "dramatiq.worker.ConsumerThread(jobs)"


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_error_names_the_broker_without_its_password_and_the_fix() -> None:
    client = redis.Redis.from_url("redis://:s3cret-pass@10.0.0.5:6380/3")
    error = broker_unavailable(client, redis.ConnectionError("Error 111 connecting.\nConnection refused."))
    reason = "Error 111 connecting. Connection refused."
    assert str(error) == f"the broker Redis at 10.0.0.5:6380/3 does not answer ({reason}); {FIX}"
    assert "s3cret" not in str(error)
    assert shown_broker(redis.Redis(unix_socket_path="/run/redis.sock")) == "unix:///run/redis.sock"


def test_consumer_connection_errors_are_one_warning_a_minute() -> None:
    # given the filter, and dramatiq's consumers losing the broker every 3 s
    clock = _Clock()
    outage = BrokerOutageLog("127.0.0.1:6379/0", every_sec=60, clock=clock)
    lost = "Consumer encountered a connection error: %s"
    first = _record(CONSUMER, logging.CRITICAL, lost, "Error 111 connecting to 127.0.0.1:6379.")
    # then the first becomes one WARNING naming the broker and the fix
    assert outage.filter(first)
    assert first.levelname == "WARNING" and first.levelno == logging.WARNING
    assert first.getMessage().startswith("The broker Redis at 127.0.0.1:6379/0 does not answer (Error 111")
    assert FIX in first.getMessage()
    # and the next ones within the minute, with their restart lines, are dropped
    clock.now += 3
    assert not outage.filter(_record("dramatiq.worker.ConsumerThread(results)", logging.CRITICAL, lost, "x"))
    assert not outage.filter(_record(CONSUMER, logging.INFO, "Restarting consumer in %0.2f seconds.", 3.0))
    # and a minute later it is said again
    clock.now += 60
    assert outage.filter(_record(CONSUMER, logging.CRITICAL, lost, "x"))


def test_other_records_pass_untouched() -> None:
    outage = BrokerOutageLog("b")
    other = _record(CONSUMER, logging.CRITICAL, "Consumer encountered an unexpected error.")
    assert outage.filter(other) and other.levelno == logging.CRITICAL
    assert outage.filter(_record(CONSUMER, logging.INFO, "Restarting consumer in %0.2f seconds.", 3.0))
    assert outage.filter(
        _record("coda_bridge.x", logging.ERROR, "Consumer encountered a connection error: %s", 1)
    )


def test_a_sentinel_broker_is_named_by_its_sentinels_and_service_not_a_default_address() -> None:
    client = broker_client("redis+sentinel://:s3cret-pass@10.0.0.5:26379,10.0.0.6:26380/coda-broker/2")

    error = broker_unavailable(client, redis.ConnectionError("No master found for 'coda-broker'"))

    shown = "10.0.0.5:26379,10.0.0.6:26380/coda-broker/2 (Sentinel)"
    assert str(error).startswith(f"the broker Redis at {shown} does not answer")
    assert "localhost" not in str(error) and "s3cret" not in str(error)
