"""The probes app through Flask's test client, on a real Redis."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.control.pause_book import PauseBook
from coda_bridge.device import DeviceState
from coda_bridge.devtools.localredis import LocalRedis, free_port
from coda_bridge.errors import ConfigError
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState, utc_iso
from coda_bridge.state.registry import Registration, ready_key
from coda_bridge.web import probes_app as web

QPU = "qpu-web"
READY_FIELDS = {"ready", "vpn_state", "redis_healthy", "current_job"}
#: How long a hanging readiness check would block, far beyond READY_TIMEOUT_SEC.
HANG_SEC = 30.0
#: The readiness bound of the app under test in the hang test (read at each request).
TEST_READY_TIMEOUT_SEC = 0.5
#: How long a test's jobs worker stays ready without a refresh: beyond any test.
WORKER_HELD_SEC = 300.0


def make_settings(redis_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "qpu_id": QPU,
        "redis_url": redis_url,
        "broker_url": redis_url,
        "ready_stream_stale_sec": 5,
    }
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def state(redis_url: str) -> Iterator[NodeState]:
    node = NodeState(create_broker(make_settings(redis_url)).client, QPU)
    yield node
    node.client.close()


@pytest.fixture
def app(redis_url: str, state: NodeState) -> Flask:
    return web.create_app(make_settings(redis_url))


def ready_node(state: NodeState) -> None:
    """What a healthy node leaves behind: VPN ready, a fresh stream read, the consumer group in place,
    a jobs worker that built its executor."""
    state.set_vpn_state("ready", 30)
    state.stream_read()
    Registration(state.client, QPU, "jobs", ttl_sec=WORKER_HELD_SEC).executor_built()
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
        state.client.xgroup_create(stream_key(QPU), group_name(QPU), id="0", mkstream=True)


def test_health_answers_ok(app: Flask) -> None:
    response = app.test_client().get("/health")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_200_with_every_field_and_the_running_job(app: Flask, state: NodeState) -> None:
    ready_node(state)
    client = app.test_client()

    idle = client.get("/ready")
    state.jobs_started(["job-7"])
    busy = client.get("/ready")

    assert idle.status_code == 200
    assert idle.get_json() == {
        "ready": True,
        "vpn_state": "ready",
        "redis_healthy": True,
        "current_job": None,
        "cloud_api_reachable": True,
        "clock_offset_sec": None,
        "paused": False,
        "pause": None,
        "device_state": None,
        "broker_eviction_policy": None,
    }
    assert busy.status_code == 200
    assert busy.get_json()["current_job"] == "job-7"


def test_ready_503_naming_the_clouds_api_while_it_does_not_answer_and_200_once_it_does(
    app: Flask, state: NodeState
) -> None:
    # given: a healthy node whose last request to the cloud's API met a refused connection
    ready_node(state)
    state.cloud_unreachable("ConnectionError from http://cloud.example:80")
    client = app.test_client()

    # when: /ready is asked, then asked again after the cloud answered a request
    down = client.get("/ready")
    back = state.cloud_answered()
    up = client.get("/ready")

    # then: 503 with the reason and the error, then 200; the cloud-back mark was noted
    assert down.status_code == 503
    body = down.get_json()
    assert body["cloud_api_reachable"] is False
    assert "the cloud's API" in body["reason"] and "ConnectionError" in body["reason"]
    assert back is True and state.cloud_back_at() is not None
    assert up.status_code == 200
    assert up.get_json()["cloud_api_reachable"] is True


def test_ready_shows_the_cloud_clocks_offset(app: Flask, state: NodeState) -> None:
    ready_node(state)
    state.set_clock_offset(-600.04)

    body = app.test_client().get("/ready").get_json()

    assert body["clock_offset_sec"] == -600.0


def test_ready_503_while_paused_says_so_with_the_note_and_the_end(app: Flask, state: NodeState) -> None:
    # given a healthy node, paused with a note
    ready_node(state)
    pause = PauseBook(state.client, QPU).pause(60, "weekly calibration")

    # when /ready is asked
    response = app.test_client().get("/ready")

    # then it is alive but not ready for work, and says it is paused, why and until when
    assert response.status_code == 503
    body = response.get_json()
    assert body["paused"] is True and body["vpn_state"] == "ready"
    assert body["pause"] == {
        "since": utc_iso(pause.since),
        "until": utc_iso(pause.until),
        "note": "weekly calibration",
    }
    assert body["reason"] == f"the node is paused until {utc_iso(pause.until)}: weekly calibration"
    PauseBook(state.client, QPU).resume()
    assert app.test_client().get("/ready").status_code == 200


@pytest.mark.parametrize(
    ("device", "code"), [("idle", 200), ("busy", 200), ("maintenance", 503), ("error", 503)]
)
def test_ready_names_the_device_state_and_is_503_unless_it_takes_jobs(
    app: Flask, state: NodeState, device: str, code: int
) -> None:
    ready_node(state)
    PauseBook(state.client, QPU).set_device_state(DeviceState(device), 30)

    response = app.test_client().get("/ready")

    assert response.status_code == code
    assert response.get_json()["device_state"] == device
    assert response.get_json()["paused"] is False


@pytest.mark.parametrize("vpn_state", ["booting", "vpn_unavailable", "degraded"])
def test_ready_503_unless_vpn_ready(app: Flask, state: NodeState, vpn_state: str) -> None:
    ready_node(state)
    state.set_vpn_state(vpn_state, 30)

    response = app.test_client().get("/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert set(body) >= READY_FIELDS
    assert body["ready"] is False
    assert body["vpn_state"] == vpn_state


def test_ready_503_when_vpn_state_expired(app: Flask, state: NodeState) -> None:
    """A dead control worker stops refreshing the VPN state: the node reads as booting."""
    ready_node(state)
    state.client.delete(state.key("vpn_state"))

    response = app.test_client().get("/ready")

    assert response.status_code == 503
    assert response.get_json()["vpn_state"] == "booting"


def test_ready_503_naming_the_jobs_worker_until_one_built_its_executor_and_once_none_runs(
    app: Flask, state: NodeState
) -> None:
    # given a node healthy but for its jobs worker: the bridge reads the stream, the worker still builds
    ready_node(state)
    ready = ready_key(QPU, socket.gethostname(), os.getpid())
    state.client.delete(ready)
    worker = Registration(state.client, QPU, "jobs").start()
    client = app.test_client()

    # when /ready is asked while it builds, once it built its executor, and once it stopped
    try:
        building = client.get("/ready")
        worker.executor_built()
        built = client.get("/ready")
    finally:
        worker.stop()
    stopped = client.get("/ready")

    # then 503 naming the missing worker with every field there, 200 only while the built worker runs
    assert building.status_code == 503
    assert building.get_json()["reason"] == "no running jobs worker has a built executor"
    assert set(building.get_json()) >= READY_FIELDS
    assert built.status_code == 200
    assert stopped.status_code == 503
    assert stopped.get_json()["reason"] == "no running jobs worker has a built executor"


def test_ready_503_when_stream_read_is_stale(app: Flask, state: NodeState) -> None:
    ready_node(state)
    client = app.test_client()
    state.stream_read(time.time() - 6)  # threshold is 5 s

    stale = client.get("/ready")
    state.client.delete(state.key("stream_read_at"))
    never = client.get("/ready")

    for response in (stale, never):
        assert response.status_code == 503
        body = response.get_json()
        assert set(body) >= READY_FIELDS
        assert body["vpn_state"] == "ready" and body["redis_healthy"] is True
        assert "job stream" in body["reason"]


def test_ready_503_until_the_consumer_group_exists(app: Flask, state: NodeState) -> None:
    """A cloud Redis that restarted empty has no group: a fresh stream-read mark must not hide that."""
    ready_node(state)
    client = app.test_client()
    state.client.delete(stream_key(QPU))

    missing = client.get("/ready")
    state.client.xgroup_create(stream_key(QPU), "someone-elses-group", id="0", mkstream=True)
    other = client.get("/ready")
    ready_node(state)
    back = client.get("/ready")

    for response in (missing, other):
        assert response.status_code == 503
        body = response.get_json()
        assert set(body) >= READY_FIELDS
        assert body["redis_healthy"] is True
        assert "consumer group" in body["reason"]
    assert back.status_code == 200


def test_ready_503_when_cloud_redis_does_not_answer(redis_url: str, state: NodeState) -> None:
    ready_node(state)
    app = web.create_app(make_settings(redis_url).replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"))

    started = time.monotonic()
    response = app.test_client().get("/ready")

    # (a check that hung would be cut at READY_TIMEOUT_SEC, with another body)
    assert time.monotonic() - started < web.READY_TIMEOUT_SEC
    assert response.status_code == 503
    body = response.get_json()
    assert set(body) >= READY_FIELDS
    assert body["redis_healthy"] is False
    assert body["vpn_state"] == "ready"


def test_ready_keeps_every_field_when_the_broker_redis_is_gone(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = web.create_app(make_settings(redis_url).replace(broker_url=dead))

    response = app.test_client().get("/ready")

    assert response.status_code == 503
    body = response.get_json()
    assert set(body) >= READY_FIELDS
    assert body["redis_healthy"] is True
    assert "broker" in body["reason"]


@pytest.mark.e2e
def test_ready_answers_503_after_5_s_when_the_check_hangs(
    app: Flask, state: NodeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def blocked(*args: Any) -> dict[str, Any]:
        release.wait(HANG_SEC)
        return {"ready": True}

    # (the shipped bound is 5 s; this app's is shorter, so the test does not wait the 5 s out)
    assert web.READY_TIMEOUT_SEC == 5.0
    monkeypatch.setattr(web, "READY_TIMEOUT_SEC", TEST_READY_TIMEOUT_SEC)
    monkeypatch.setattr(web, "readiness", blocked)
    try:
        started = time.monotonic()
        response = app.test_client().get("/ready")
        elapsed = time.monotonic() - started
    finally:
        release.set()

    # at the timeout, not at the hang's end (a busy machine may add seconds, not the hang's 30)
    assert TEST_READY_TIMEOUT_SEC - 0.1 <= elapsed < TEST_READY_TIMEOUT_SEC + 5 < HANG_SEC
    assert response.status_code == 503
    assert response.get_json() == {"ready": False, "reason": "health check timeout"}


def test_metrics_report_the_shared_counters(app: Flask, state: NodeState) -> None:
    state.set_vpn_state("degraded", 30)
    state.count("jobs_completed", 4)
    state.count("jobs_failed")
    state.count("executor_seconds", 2.5)
    state.count("webhook_attempts", 7)
    state.count("webhook_dead_letters")
    state.heartbeat_accepted(time.time() - 3)

    response = app.test_client().get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }
    assert samples[("coda_bridge_jobs_total", (("outcome", "completed"),))] == 4
    assert samples[("coda_bridge_jobs_total", (("outcome", "failed"),))] == 1
    assert samples[("coda_bridge_jobs_total", (("outcome", "cancelled"),))] == 0
    assert samples[("coda_bridge_executor_seconds_total", ())] == 2.5
    assert samples[("coda_bridge_webhook_attempts_total", ())] == 7
    assert samples[("coda_bridge_webhook_dead_letters_total", ())] == 1
    assert samples[("coda_bridge_queue_depth", (("queue", "jobs"),))] == 0
    assert 3 <= samples[("coda_bridge_seconds_since_heartbeat", ())] < 10
    assert samples[("coda_bridge_vpn_state", (("state", "degraded"),))] == 1
    assert samples[("coda_bridge_vpn_state", (("state", "ready"),))] == 0


def test_metrics_503_when_the_broker_redis_is_gone(redis_url: str) -> None:
    app = web.create_app(make_settings(redis_url).replace(broker_url=f"redis://127.0.0.1:{free_port()}/0"))

    response = app.test_client().get("/metrics")

    assert response.status_code == 503


def test_no_dashboard_unless_enabled(app: Flask) -> None:
    assert app.test_client().get("/dashboard/").status_code == 404


@pytest.mark.parametrize(
    "prefix",
    [
        " /status",
        "/status ",
        "/dashboard/../status",
        "/dash board",
        "/a//b",
        "/a%20b",
        "/q?x",
        "/./d",
        "/a\\b",
        "/tableau-é",
    ],
)
def test_a_dashboard_prefix_no_client_can_request_is_refused(redis_url: str, prefix: str) -> None:
    # Given a prefix that is not a plain URL path (a client normalises dots, never sends the space, and
    # the WSGI path of a non-ASCII one is its UTF-8 bytes as Latin-1):
    # the dashboard would be mounted where no request reaches it, while the log says it is mounted
    settings = make_settings(redis_url, host="127.0.0.1", dashboard_enabled=True, dashboard_prefix=prefix)
    # When the app is built, then it is refused in one line naming the prefix and the default
    with pytest.raises(ConfigError, match="CODA_DASHBOARD_PREFIX") as refused:
        web.create_app(settings)
    assert "\n" not in str(refused.value) and repr(prefix) in str(refused.value)
    assert "/dashboard" in str(refused.value)


@pytest.mark.parametrize(
    "prefix", ["/dashboard", "ops/queues/", "//dashboard", "/STATUS", "/status-x", "/a:b@c"]
)
def test_a_dashboard_prefix_of_its_own_is_taken(redis_url: str, prefix: str) -> None:
    # Given a prefix a browser requests as written, on no page of the probes app; when it is checked,
    # then nothing is refused
    web.check_dashboard(
        make_settings(redis_url, host="127.0.0.1", dashboard_enabled=True, dashboard_prefix=prefix)
    )


@pytest.mark.skipif(
    importlib.util.find_spec("dramatiq_dashboard") is None,
    reason="dramatiq-dashboard is not installed (pip install --no-deps dramatiq-dashboard==0.4.0)",
)
def test_dashboard_mounted_under_its_prefix_lists_our_queues(redis_url: str) -> None:
    settings = make_settings(
        redis_url, host="127.0.0.1", dashboard_enabled=True, dashboard_prefix="/ops/queues/"
    )
    app = web.create_app(settings)
    client = app.test_client()

    index = client.get("/ops/queues/")
    bare = client.get("/ops/queues")
    jobs = client.get("/ops/queues/queues/jobs")

    assert index.status_code == 200
    page = index.get_data(as_text=True)
    for queue in ("jobs", "results", "control"):
        assert f'href="/ops/queues/queues/{queue}"' in page
    assert bare.status_code == 302 and bare.headers["Location"].endswith("/ops/queues/")
    assert jobs.status_code == 200
    assert client.get("/health").status_code == 200  # the probes still answer beside it


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "lab-pc.example"])
def test_a_dashboard_without_a_password_is_refused_on_a_bind_others_reach(redis_url: str, host: str) -> None:
    with pytest.raises(ConfigError, match="CODA_DASHBOARD_PASSWORD"):
        web.create_app(make_settings(redis_url, host=host, dashboard_enabled=True))


@pytest.mark.parametrize("prefix", ["/status", "/status/queues", "ready", "/metrics/", "/", "", "/health"])
def test_a_dashboard_prefix_that_would_hide_a_page_of_the_probes_app_is_refused(
    redis_url: str, prefix: str
) -> None:
    settings = make_settings(redis_url, host="127.0.0.1", dashboard_enabled=True, dashboard_prefix=prefix)
    with pytest.raises(ConfigError, match="CODA_DASHBOARD_PREFIX") as refused:
        web.create_app(settings)
    assert "\n" not in str(refused.value) and "/dashboard" in str(refused.value)


@pytest.mark.skipif(
    importlib.util.find_spec("dramatiq_dashboard") is None,
    reason="dramatiq-dashboard is not installed (pip install --no-deps dramatiq-dashboard==0.4.0)",
)
def test_a_dashboard_with_a_password_asks_for_it_and_the_probes_do_not(redis_url: str) -> None:
    # Given a dashboard on every interface, behind a password
    settings = make_settings(redis_url, dashboard_enabled=True, dashboard_password="s3cret-pass")
    client = web.create_app(settings).test_client()
    right = base64.b64encode(b"coda:s3cret-pass").decode()
    wrong = base64.b64encode(b"coda:guess").decode()

    # Then it answers only with the credentials, and the probes need none
    assert client.get("/dashboard/").status_code == 401
    assert client.get("/dashboard/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    assert client.get("/dashboard/", headers={"Authorization": f"Basic {right}"}).status_code == 200
    assert client.get("/health").status_code == 200
    assert "s3cret-pass" not in client.get("/dashboard/").get_data(as_text=True)


def test_health_answers_at_once_while_both_redis_servers_are_stalled() -> None:
    # Given a probes app whose broker and cloud Redis stop answering (SIGSTOP: connections hang)
    with LocalRedis() as stalled:
        app = web.create_app(make_settings(stalled.url))
        assert stalled.process is not None
        stalled.process.send_signal(signal.SIGSTOP)
        try:
            # When the liveness probe asks
            started = time.monotonic()
            answer = app.test_client().get("/health")
            took = time.monotonic() - started
        finally:
            stalled.process.send_signal(signal.SIGCONT)

    # Then it answers 200 without waiting on either (a wait would last at least a PING's timeout)
    assert answer.status_code == 200
    assert took < web.PING_TIMEOUT_SEC, f"/health took {took:.2f} s"
