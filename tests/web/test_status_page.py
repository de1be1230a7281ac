"""The status page through Flask's test client, on a real Redis: what it shows, to whom, and what never."""

from __future__ import annotations

import base64
import contextlib
import html
import importlib.util
import os
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from flask import Flask

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.control.pause_book import PauseBook
from coda_bridge.control.windows import next_window, parse_window
from coda_bridge.device import DeviceState
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState, utc_iso
from coda_bridge.state.registry import Registration, ready_key
from coda_bridge.web import probes_app as web
from coda_bridge.web.statuspage import PauseBanner

QPU = "qpu-status"
TOKEN = "node-token-abc123-never-shown"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIstatus-page-secret-key\n-----END PRIVATE KEY-----"
CONNECT_HEADER = "Bearer connect-header-secret-xyz"
PASSWORD = "s3cret-status-pass"
#: How long a test's jobs worker stays ready without a refresh: beyond any test.
WORKER_HELD_SEC = 300.0


def make_settings(redis_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "qpu_id": QPU,
        "qpu_display_name": "Status test QPU",
        "redis_url": redis_url,
        "broker_url": redis_url,
        "host": "127.0.0.1",
        "ready_stream_stale_sec": 5,
        "node_token": TOKEN,
        "jwt_key_id": "k-status",
        "jwt_private_key": PRIVATE_KEY,
        "node_connect_headers": {"Authorization": CONNECT_HEADER},
        "maintenance_windows": ["sun 02:00-04:00"],
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


def page_text(app: Flask) -> str:
    response = app.test_client().get("/status/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def cell(page: str, element_id: str) -> str:
    """The text of the element with ``element_id``, tags dropped and whitespace folded."""
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</(td|p|table)>', page, re.S)
    assert match, f"no element {element_id} in the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def test_a_ready_node_shows_identity_queues_heartbeat_clock_and_processes(
    redis_url: str, app: Flask, state: NodeState
) -> None:
    # given a ready node with a job running, a job waiting, a dead letter, a heartbeat, a clock offset
    ready_node(state)
    state.jobs_started(["job-running-1"])
    state.heartbeat_accepted()
    state.set_clock_offset(-1.5)
    broker = create_broker(make_settings(redis_url))
    broker_client = state.client
    broker_client.rpush(f"{broker.namespace}:jobs", "m1")
    broker_client.zadd(f"{broker.namespace}:results.XQ", {"dead-1": 1.0})
    registration = Registration(broker_client, QPU, "jobs").start()
    try:
        # when the operator opens the page
        page = page_text(app)
    finally:
        registration.stop()

    # then it shows who, that it is ready, and each figure
    assert "<h1>qpu-status" in page and "Status test QPU" in page
    assert cell(page, "state") == "Ready: taking jobs"
    assert cell(page, "pause") == "not paused"
    assert cell(page, "device") == "no state reported"
    assert cell(page, "current-job") == "job-running-1"
    assert cell(page, "stream-pending") == "0 read, result not at the cloud yet"
    assert "Queue jobs</th><td>1 waiting" in page
    assert cell(page, "dead-letters") == "jobs 0, results 1, control 0"
    assert re.fullmatch(r"\S+Z \([01] s ago\)", cell(page, "heartbeat")), cell(page, "heartbeat")
    assert cell(page, "cloud-api") == "answering"
    assert cell(page, "clock").startswith("-1.5 s")
    assert re.search(r"<th>jobs</th><td>pid \d+ on \S+ \(version", page)
    # and the next maintenance window, and that it reloads itself (no script needed)
    expected = next_window([parse_window("sun 02:00-04:00")], datetime.now(UTC).timestamp())
    assert expected is not None
    assert f"none in force next: sun 02:00-04:00, from {utc_iso(expected.start)}" == cell(page, "window")
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<script" not in page
    bare = app.test_client().get("/status")
    assert bare.status_code == 308 and bare.headers["Location"].endswith("/status/")


def test_a_paused_node_shows_the_pause_with_its_note_and_end_and_the_same_reason_as_ready(
    app: Flask, state: NodeState
) -> None:
    # given a ready node, paused with a note, its device in calibration
    ready_node(state)
    pause = PauseBook(state.client, QPU).pause(300, "fridge warm-up")
    PauseBook(state.client, QPU).set_device_state(DeviceState.CALIBRATION, 30)

    # when the page is opened
    page = page_text(app)
    ready = app.test_client().get("/ready").get_json()

    # then it says not ready, with /ready's own reason, the note and the end
    assert cell(page, "state") == f"Not ready: {ready['reason']}"
    assert "fridge warm-up" in ready["reason"]
    assert 'class="state paused"' in page
    assert cell(page, "pause") == (
        f"until {pause.as_dict()['until']} (since {pause.as_dict()['since']}) note: fridge warm-up"
    )
    assert cell(page, "device") == "calibration"


def test_a_node_without_a_ready_jobs_worker_shows_the_same_reason_as_ready(
    app: Flask, state: NodeState
) -> None:
    # given a node healthy but for its jobs worker, which has not built its executor (or is gone)
    ready_node(state)
    state.client.delete(ready_key(QPU, socket.gethostname(), os.getpid()))

    # when the page is opened
    page = page_text(app)
    ready = app.test_client().get("/ready").get_json()

    # then it says not ready, with /ready's own reason naming the missing jobs worker
    assert ready["reason"] == "no running jobs worker has a built executor"
    assert cell(page, "state") == f"Not ready: {ready['reason']}"


def test_an_operator_note_with_markup_renders_inert(app: Flask, state: NodeState) -> None:
    # given a pause whose note carries a script and markup
    note = "<script>alert('x')</script><b>bold</b> & \"quotes\""
    PauseBook(state.client, QPU).pause(60, note)

    # when the page is opened
    page = page_text(app)

    # then the note is shown as text: escaped, never as a tag
    assert "<script>" not in page and "<b>bold</b>" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt; &amp; &#34;quotes&#34;"
    assert escaped in page


def test_no_secret_is_ever_in_the_page(app: Flask, state: NodeState) -> None:
    # given a node whose settings hold a node token, a private key and connect headers, a JWT around
    ready_node(state)
    PauseBook(state.client, QPU).pause(60, "secret check")
    state.cloud_unreachable("HTTP 503 from the cloud")

    # when the page is opened
    page = page_text(app)

    # then none of them (nor a piece of one) is in it
    for secret in (TOKEN, "MIIstatus-page-secret-key", "PRIVATE KEY", "connect-header-secret", "Bearer"):
        assert secret not in page
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.", page)  # no JWT
    assert "not answering since" in cell(page, "cloud-api")


def test_the_page_says_what_is_unknown_when_the_broker_redis_is_gone(redis_url: str) -> None:
    # given a page whose broker Redis does not answer
    settings = make_settings(redis_url, broker_url=f"redis://127.0.0.1:{_closed_port()}/0")
    app = web.create_app(settings)

    # when it is opened
    page = page_text(app)

    # then it renders, not ready, saying why, without guessing the rest
    assert cell(page, "state") == "Not ready: the local broker Redis does not answer"
    assert "unknown: the local broker Redis does not answer" in page
    assert cell(page, "pause") == "unknown"


def _closed_port() -> int:
    from coda_bridge.devtools.localredis import free_port

    return free_port()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_the_page_without_a_password_is_refused_on_a_bind_others_reach(redis_url: str, host: str) -> None:
    # given probes on a bind others reach, no dashboard password
    client = web.create_app(make_settings(redis_url, host=host)).test_client()

    # when the page is asked for, then it is refused naming what to set; the probes still answer
    refused = client.get("/status/")
    assert refused.status_code == 403
    assert "CODA_DASHBOARD_PASSWORD" in refused.get_data(as_text=True)
    assert "qpu-status" not in refused.get_data(as_text=True)
    assert client.get("/health").status_code == 200


def test_the_page_asks_for_the_dashboards_password_when_one_is_set(redis_url: str) -> None:
    # given probes on every interface with the dashboard's password set
    settings = make_settings(redis_url, host="0.0.0.0", dashboard_password=PASSWORD)
    client = web.create_app(settings).test_client()
    right = base64.b64encode(f"coda:{PASSWORD}".encode()).decode()
    wrong = base64.b64encode(b"coda:guess").decode()

    # then only the right credentials open it
    assert client.get("/status/").status_code == 401
    assert client.get("/status/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    opened = client.get("/status/", headers={"Authorization": f"Basic {right}"})
    assert opened.status_code == 200 and "qpu-status" in opened.get_data(as_text=True)
    assert PASSWORD not in opened.get_data(as_text=True)


@pytest.mark.skipif(
    importlib.util.find_spec("dramatiq_dashboard") is None,
    reason="dramatiq-dashboard is not installed (pip install --no-deps dramatiq-dashboard==0.4.0)",
)
def test_the_dashboard_shows_a_banner_while_paused(redis_url: str, state: NodeState) -> None:
    # given the dashboard mounted, on a paused node whose note carries markup
    settings = make_settings(redis_url, dashboard_enabled=True)
    client = web.create_app(settings).test_client()
    assert "coda-pause-banner" not in client.get("/dashboard/").get_data(as_text=True)
    PauseBook(state.client, QPU).pause(60, "fridge <warm-up>")

    # when a dashboard page is opened
    response = client.get("/dashboard/")
    body = response.get_data(as_text=True)

    # then the pause is on top of it, escaped, and the length header matches the new body
    assert response.status_code == 200
    assert 'class="coda-pause-banner"' in body and "fridge &lt;warm-up&gt;" in body
    assert int(response.headers["Content-Length"]) == len(response.get_data())


def _wsgi_body(app: Any) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.update(status=status, headers=dict(headers))

    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response))
    return seen["status"], seen["headers"], body


def test_the_banner_keeps_what_an_app_writes_and_leaves_other_bodies_alone(state: NodeState) -> None:
    # given a paused node and two WSGI apps: one HTML page half written through write(), one JSON body
    PauseBook(state.client, QPU).pause(60, "banner check")

    def html_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", "33")])
        write(b"<html><body class='x'>")
        return [b"page</body></html>"]

    def json_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"body": 1}']

    # when each answers through the banner
    status, headers, body = _wsgi_body(PauseBanner(html_app, PauseBook(state.client, QPU)))
    _, _, untouched = _wsgi_body(PauseBanner(json_app, PauseBook(state.client, QPU)))

    # then the page has the banner right after <body>, nothing lost, its length right; JSON is as it was
    assert status == "200 OK"
    assert body.startswith(b"<html><body class='x'><div class=\"coda-pause-banner\"")
    assert body.endswith(b"banner check; it takes no new job.</div>page</body></html>")
    assert headers["Content-Length"] == str(len(body))
    assert untouched == b'{"body": 1}'
