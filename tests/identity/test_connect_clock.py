"""A reconnect refused for its token's time is retried on the cloud's time, never an exit 78."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from coda_bridge.cloud import clock as clock_module
from coda_bridge.cloud.clock import CloudClock
from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.devtools.devcloud import DevCloudClient, DevCloudProcess, start_devcloud_process
from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.errors import ClockRefused
from coda_bridge.identity.connect import connect_node, load_node_settings
from coda_bridge.ops.runners import connect_or_exit

#: Against the local cloud simulator, a real process (e2e: not in `make unit`).
pytestmark = pytest.mark.e2e

#: How far ahead the node's clock runs, in seconds.
SKEW_SEC = 600


def _fast() -> float:
    return time.time() + SKEW_SEC


@pytest.fixture
def dateless_cloud(redis_server: LocalRedis) -> Iterator[DevCloudClient]:
    """A local cloud whose answers carry no usable Date header."""
    proc: DevCloudProcess = start_devcloud_process(redis_url=redis_server.url, extra_args=["--no-date"])
    try:
        client = proc.client()
        yield client
        client.close()
    finally:
        proc.stop()


def _provisioned(clean_env: pytest.MonkeyPatch, cloud: DevCloudClient, redis_url: str) -> str:
    """A node provisioned (a token: no time claims) against ``cloud``; its QPU id."""
    qpu_id = f"qpu-{uuid.uuid4().hex[:10]}"
    cloud.create_qpu(qpu_id, native_gate_set="cz", num_qubits=4, connection_mode="https")
    clean_env.setenv("CODA_WEBAPP_URL", cloud.base_url)
    clean_env.setenv("CODA_VPN_REQUIRED", "false")
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    clean_env.setenv("CODA_NODE_CONNECT_RETRIES", "2")
    settings = load_node_settings()
    connect_node(settings, token=cloud.mint_token(qpu_id), client=CloudClient(settings, sleep=lambda _: None))
    return qpu_id


def test_a_reconnect_10_minutes_fast_is_retried_on_the_clouds_time_and_accepted(
    clean_env: pytest.MonkeyPatch, devcloud: DevCloudClient, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given: a provisioned node whose clock runs 10 minutes ahead
    qpu_id = _provisioned(clean_env, devcloud, redis_url)
    settings = load_node_settings()
    client = CloudClient(settings, sleep=lambda _: None, clock=CloudClock(local=_fast))

    # when: it reconnects with its own key
    connected = connect_node(settings, client=client)

    # then: the first token was refused for its iat, the second (on the cloud's time) accepted
    assert connected.qpu_id == qpu_id
    retried = [r.getMessage() for r in caplog.records if "Connect attempt 1/" in r.getMessage()]
    assert len(retried) == 1 and "not yet valid (iat)" in retried[0]
    assert len(devcloud.connects(qpu_id, mode="reconnect", accepted=True)) == 1
    assert abs(client.clock.offset_sec + SKEW_SEC) < 3


def test_a_clock_refusal_that_cannot_be_corrected_is_an_error_to_retry_not_exit_78(
    clean_env: pytest.MonkeyPatch, dateless_cloud: DevCloudClient, redis_url: str
) -> None:
    # given: a provisioned node 10 minutes fast, and a cloud that tells no time
    _provisioned(clean_env, dateless_cloud, redis_url)
    clean_env.setattr(clock_module, "clock_skew_sec", lambda: float(SKEW_SEC))

    # when: the bridge's connect runs
    with pytest.raises(ClockRefused) as refused:
        connect_or_exit(load_node_settings())

    # then: a retryable error naming the token's time (the process exits 1 and is restarted), not 78
    assert refused.value.status == 401
    assert "not yet valid (iat)" in str(refused.value)
    assert "gave up after 2 attempts" in str(refused.value)
