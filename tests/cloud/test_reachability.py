"""Whether the cloud's API is down, as requests find it: one job's webhook 5xx is no outage (issue 22).

CloudClient against requests-mock, its marks in a real Redis, and the
``/ready`` body the probes app builds from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
import requests_mock as rm

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.reachability import DOWN_AFTER_FAILURES, Reachability
from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.errors import HeartbeatRejected, NodeError, WebhookError
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState
from coda_bridge.state.registry import Registration
from coda_bridge.web import probes_app as web

BASE = "https://cloud.test"
HEARTBEAT_URL = f"{BASE}/api/internal/qpu/heartbeat"
QPU = "qpu-reach"
HEARTBEAT_BODY = {"current_job": None, "last_job_at": None, "redis_healthy": True, "connectivity": None}
RESULT = {"job_id": "j-1", "status": "completed", "counts": {"0": 1}}
#: How long a test's jobs worker stays ready without a refresh: beyond any test.
WORKER_HELD_SEC = 300.0


def callback(job: int) -> str:
    return f"{BASE}/api/internal/qpu/webhook/j-{job}"


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(generate_private_key_pem(), "kid-reach", QPU)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    values: dict[str, Any] = {
        "webapp_url": BASE,
        "qpu_id": QPU,
        "redis_url": redis_url,
        "broker_url": redis_url,
        "ready_stream_stale_sec": 30,
    }
    return Settings(**values)


@pytest.fixture
def state(settings: Settings) -> Iterator[NodeState]:
    node = NodeState(create_broker(settings).client, QPU)
    # what a healthy node leaves behind: VPN ready, a fresh stream read, the consumer group in place,
    # a jobs worker that built its executor
    node.set_vpn_state("ready", 30)
    node.stream_read()
    Registration(node.client, QPU, "jobs", ttl_sec=WORKER_HELD_SEC).executor_built()
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
        node.client.xgroup_create(stream_key(QPU), group_name(QPU), id="0", mkstream=True)
    yield node
    node.client.close()


@pytest.fixture
def client(settings: Settings, state: NodeState) -> Iterator[CloudClient]:
    cloud = CloudClient(settings, sleep=lambda _sec: None, reachability=Reachability(state))
    yield cloud
    cloud.close()


def ready(settings: Settings) -> tuple[int, dict[str, Any]]:
    response = web.create_app(settings).test_client().get("/ready")
    return response.status_code, response.get_json()


def test_one_webhook_answered_503_while_heartbeats_are_accepted_leaves_the_node_ready(
    client: CloudClient, signer: Signer, settings: Settings, state: NodeState
) -> None:
    # given: heartbeats accepted, one job's webhook answered 503
    with rm.Mocker() as mock:
        mock.post(HEARTBEAT_URL, status_code=200, json={})
        mock.post(callback(1), status_code=503, json={"error": "this job's handler is busy"})
        client.heartbeat(signer, HEARTBEAT_BODY)

        # when: that result is posted and refused
        with pytest.raises(WebhookError):
            client.deliver(callback(1), signer, RESULT)

    # then: the API is not down, /ready stays 200 (the job retries on its own)
    assert state.cloud_down() is None
    status, body = ready(settings)
    assert (status, body["cloud_api_reachable"], body["ready"]) == (200, True, True), body


def test_failures_in_a_row_of_any_request_mark_the_api_down_and_one_answer_clears_it(
    client: CloudClient, signer: Signer, settings: Settings, state: NodeState
) -> None:
    # given: every webhook answers 502
    with rm.Mocker() as mock:
        mock.post(HEARTBEAT_URL, status_code=200, json={})
        for job in range(DOWN_AFTER_FAILURES):
            mock.post(callback(job), status_code=502, text="Bad Gateway")

        # when: that many results in a row are refused
        for job in range(DOWN_AFTER_FAILURES - 1):
            with pytest.raises(WebhookError):
                client.deliver(callback(job), signer, RESULT)
        before_last = state.cloud_down()
        with pytest.raises(WebhookError):
            client.deliver(callback(DOWN_AFTER_FAILURES - 1), signer, RESULT)
        down = state.cloud_down()
        status, body = ready(settings)

        # and then: a heartbeat is answered
        client.heartbeat(signer, HEARTBEAT_BODY)

    # then: down only at the last of them, /ready 503 naming the API; the answer clears it
    assert before_last is None
    assert down is not None and "502 from https://cloud.test" in down[1]
    assert status == 503 and body["cloud_api_reachable"] is False
    assert "the cloud's API does not answer" in body["reason"]
    assert state.cloud_down() is None


def test_an_answer_between_failures_starts_the_count_again(
    client: CloudClient, signer: Signer, state: NodeState
) -> None:
    # given: webhooks alternate 503 and accepted
    with rm.Mocker() as mock:
        mock.post(callback(1), status_code=503)
        mock.post(callback(2), status_code=200, json={})

        # when: more failures than the limit are posted, but never that many in a row
        for _ in range(DOWN_AFTER_FAILURES):
            with pytest.raises(WebhookError):
                client.deliver(callback(1), signer, RESULT)
            client.deliver(callback(2), signer, RESULT)

    # then: the API never reads as down
    assert state.cloud_down() is None


@pytest.mark.parametrize(
    "answer",
    [{"status_code": 503, "text": "Service Unavailable"}, {"exc": requests.ConnectionError}],
    ids=["503", "connection-refused"],
)
def test_one_failed_heartbeat_marks_the_api_down_at_once(
    client: CloudClient, signer: Signer, settings: Settings, state: NodeState, answer: dict[str, Any]
) -> None:
    # given: the heartbeat endpoint fails
    with rm.Mocker() as mock:
        mock.post(HEARTBEAT_URL, **answer)

        # when: one heartbeat is sent
        with pytest.raises((HeartbeatRejected, NodeError)):
            client.heartbeat(signer, HEARTBEAT_BODY)

    # then: the API is down, and /ready says so
    assert state.cloud_down() is not None
    status, body = ready(settings)
    assert status == 503 and body["cloud_api_reachable"] is False
