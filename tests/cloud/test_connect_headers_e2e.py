"""CODA_NODE_CONNECT_HEADERS against a protected staging cloud, through a whole node.

The local cloud simulator demands a deployment-protection bypass header on
its node API and refuses (401) every request without it, as a staging cloud
behind such a protection does.  The node (the bridge and the dramatiq
workers as real processes) provisions, heartbeats, posts results and probes
the cloud through the VPN guard (the loopback interface standing in for the
tunnel), all with the header; a results endpoint on another origin the site
allows (a second simulator, protected the same way) never receives it, and
no log line holds it.  README: Settings, "Migrating from coda-node 0.1.1".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pipeline_support import FAST_LIMITS, circuit, deliveries, stack_env, status

from coda_bridge.devtools.devcloud.launcher import DevCloudProcess, start_devcloud_process
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.state.node_state import NodeState
from coda_bridge.vpn.states import READY

pytestmark = pytest.mark.e2e

#: How long the node may take to settle a job or send a few heartbeats, in seconds.
SETTLE_SEC = 30.0
BYPASS_NAME = "x-vercel-protection-bypass"
BYPASS_VALUE = f"bypass-{uuid.uuid4().hex}"
BYPASS = {BYPASS_NAME: BYPASS_VALUE}


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCloudProcess]:
    """Another origin the site allows results to go to, protected by the same header."""
    workdir = tmp_path_factory.mktemp("foreign-cloud")
    made = start_devcloud_process(
        log_path=workdir / "foreign.log", accept_unknown_jobs=True, required_headers=BYPASS
    )
    yield made
    made.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, foreign: DevCloudProcess) -> Iterator[LocalStack]:
    """A node behind a protected cloud: the header set, the VPN required with lo as its tunnel."""
    workdir = tmp_path_factory.mktemp("protected-stack")
    env = stack_env(
        workdir,
        **FAST_LIMITS,
        CODA_NODE_CONNECT_HEADERS=json.dumps(BYPASS),
        CODA_ALLOWED_CALLBACK_HOSTS=foreign.base_url,
        CODA_VPN_REQUIRED="true",
        CODA_VPN_INTERFACE_HINT="lo",
        CODA_NODE_AUTO_VPN="false",
        CODA_LOG_LEVEL="DEBUG",
    )
    with LocalStack(workdir, env=env, required_headers=BYPASS) as node:
        yield node


def test_a_protected_cloud_gets_every_request_of_the_node_with_the_header(stack: LocalStack) -> None:
    # given a node provisioned behind the protected cloud (the stack fixture)
    cloud = stack.cloud

    # when it runs a job and keeps beating
    job_id = cloud.submit(stack.qpu_id, ir=circuit(), shots=100)
    wait_until(lambda: status(stack, job_id).get("state") == "completed", SETTLE_SEC, "the job to complete")
    wait_until(lambda: len(cloud.heartbeats(stack.qpu_id, accepted=True)) >= 2, SETTLE_SEC, "two heartbeats")
    broker = redis.Redis.from_url(stack.broker_redis.url)
    try:
        vpn_state = wait_until(
            lambda: (state := NodeState(broker, stack.qpu_id).vpn_state()) == READY and state,
            SETTLE_SEC,
            "the control worker's VPN check",
        )
    finally:
        broker.close()

    # then provision, heartbeats, the result and the VPN probes all passed the protection: nothing refused
    assert [c["mode"] for c in cloud.connects(stack.qpu_id, accepted=True)] == ["provision"]
    assert [d["accepted"] for d in deliveries(stack, job_id)] == [True]
    assert vpn_state == READY
    assert cloud.refused() == []


def test_a_result_for_an_allowed_foreign_origin_goes_there_without_the_header(
    stack: LocalStack, foreign: DevCloudProcess
) -> None:
    # given a job whose callback is on the other origin the site allows
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    callback = f"{foreign.base_url}/api/internal/qpu/webhook/{job_id}"

    # when the node runs it and posts its result
    stack.cloud.submit(stack.qpu_id, ir=circuit(), shots=10, job_id=job_id, callback_url=callback)
    wait_until(lambda: foreign.client().refused(), SETTLE_SEC, "the result to reach the other origin")

    # then the other origin saw the POST without the header (its protection refused it), and never with it
    (refused,) = foreign.client().refused()
    assert (refused["method"], refused["path"], refused["missing"]) == (
        "POST",
        f"/api/internal/qpu/webhook/{job_id}",
        [BYPASS_NAME],
    )
    assert foreign.client().webhooks() == []


def test_no_log_line_of_the_node_holds_the_header(stack: LocalStack) -> None:
    # given the node's logs after the runs above (at DEBUG), every process's
    logs = sorted(Path(stack.workdir).glob("*.log"))

    # then the header's value is in none of them, while its traffic was logged
    assert {path.name for path in logs} >= {"bridge.log", "jobs.log", "results.log", "control.log"}
    for path in logs:
        assert BYPASS_VALUE not in path.read_text(errors="replace"), path.name
