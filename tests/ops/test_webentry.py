"""The probes app's process entry: the web registration is the entry's, and ends with gunicorn's worker."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import redis

from coda_bridge.ops.webentry import REGISTRATION_CONFIG, registered
from coda_bridge.settings import Settings
from coda_bridge.state.registry import live_processes
from coda_bridge.web.gunicorn_app import stop_registration
from coda_bridge.web.probes_app import create_app

QPU = "qpu-webentry"


def test_the_entry_registers_the_web_process_and_worker_exit_ends_it(redis_url: str) -> None:
    # given the app of a provisioned node, registered by the entry
    app = create_app(Settings(qpu_id=QPU, redis_url=redis_url, broker_url=redis_url))
    before = set(threading.enumerate())
    registration = registered(app)
    client = redis.Redis.from_url(redis_url)
    assert app.config[REGISTRATION_CONFIG] is registration
    assert [info.role for info in live_processes(client, QPU)] == ["web"]

    # when gunicorn's worker exits (its worker_exit hook, with the app as the worker's WSGI app)
    stop_registration(None, SimpleNamespace(wsgi=app))

    # then the registration is gone from the broker and its thread has ended
    assert live_processes(client, QPU) == []
    assert set(threading.enumerate()) - before == set()
    client.close()
