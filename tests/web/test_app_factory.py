"""``create_app`` only configures: no identity wait, no thread, nothing written to the broker."""

from __future__ import annotations

import threading

import pytest
import redis

from coda_bridge.errors import ConfigError
from coda_bridge.settings import Settings
from coda_bridge.web.probes_app import create_app

QPU = "qpu-factory"


def test_create_app_leaves_no_thread_and_writes_nothing(redis_url: str) -> None:
    # given a provisioned node's settings, and the threads running now
    settings = Settings(qpu_id=QPU, redis_url=redis_url, broker_url=redis_url)
    before = set(threading.enumerate())
    client = redis.Redis.from_url(redis_url)

    # when the app is made
    app = create_app(settings)

    # then it answers, with no thread left behind and no registration in the broker
    assert app.test_client().get("/health").status_code == 200
    assert set(threading.enumerate()) - before == set()
    assert client.keys("*") == []
    client.close()


def test_create_app_of_a_node_not_provisioned_says_so_at_once(clean_env: pytest.MonkeyPatch) -> None:
    # given no identity / when the app is made without settings / then a one-line ConfigError, no wait
    with pytest.raises(ConfigError, match="no node identity"):
        create_app()
