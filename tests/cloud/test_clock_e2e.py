"""The node's clock 10 minutes fast against the local cloud, which checks ``iat`` and ``exp``.

The offset is injected into every process of the node (the ``clock.skew_sec``
failpoint moves the one clock tokens are signed on); the cloud's clock is right.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pipeline_support import FAST_LIMITS, circuit, stack_env, status

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

#: How far ahead the node's clock runs, in seconds.
SKEW_SEC = 600
#: A token signed this far ahead is refused by the cloud: "token is not yet valid (iat)".
FAST_CLOCK = {"CODA_FAILPOINTS": f"clock.skew_sec={SKEW_SEC}"}


def _ready(stack: LocalStack) -> dict[str, object]:
    """/ready's body; empty while the probes app does not listen yet (the stack does not wait for it)."""
    try:
        body: dict[str, object] = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).json()
    except requests.RequestException:
        return {}
    return body


def _clock_warnings(stack: LocalStack) -> dict[str, int]:
    # the Date header has 1 s resolution and the round trip blurs it: 600 s may read as 599 or 601
    near = "|".join(str(SKEW_SEC + d) for d in (-2, -1, 0, 1, 2))
    line = re.compile(rf"clock is ({near}) s ahead of the cloud's")
    found = {}
    for name, child in stack.children.items():
        count = len(line.findall(child.log_path.read_text(errors="replace")))
        if count:
            found[name] = count
    return found


@pytest.fixture
def fast_stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path, env=stack_env(tmp_path, **FAST_LIMITS, **FAST_CLOCK), web=True) as node:
        yield node


@pytest.fixture
def fast_stack_no_date(tmp_path: Path) -> Iterator[LocalStack]:
    # a refused result's retries wait 0.25-0.5 s each: the test counts them, not how long they waited
    env = stack_env(tmp_path, **FAST_LIMITS, **FAST_CLOCK, CODA_WEBHOOK_MAX_BACKOFF_SEC="0.5")
    with LocalStack(tmp_path, env=env, devcloud_args=["--no-date"]) as node:
        yield node


def test_a_node_10_minutes_fast_signs_on_the_clouds_time_and_is_accepted(fast_stack: LocalStack) -> None:
    # given: a node whose clock runs 10 minutes ahead of the cloud's
    stack = fast_stack

    # when: it heartbeats and runs jobs
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok"), 10) for _ in range(10)]
    results = stack.cloud.wait_for_results(ids, timeout_sec=60)

    # then: every result is accepted, heartbeats are accepted, and the offset is shown and logged
    assert {r["status"] for r in results.values()} == {"completed"}
    wait_until(
        lambda: len(stack.cloud.heartbeats(stack.qpu_id, accepted=True)) >= 2, 20, "accepted heartbeats"
    )
    ready = wait_until(
        lambda: (body := _ready(stack)).get("clock_offset_sec") is not None and body, 60, "/ready"
    )
    assert abs(float(str(ready["clock_offset_sec"])) + SKEW_SEC) < 3
    metrics = requests.get(f"http://127.0.0.1:{stack.web_port}/metrics", timeout=5).text
    line = next(x for x in metrics.splitlines() if x.startswith("coda_bridge_clock_offset_seconds "))
    assert abs(float(line.split()[1]) + SKEW_SEC) < 3
    warnings = wait_until(lambda: _clock_warnings(stack), 20, "the clock warning in the logs")
    assert warnings and set(warnings.values()) == {1}, warnings  # one line per process that measured it


def test_with_no_usable_date_a_refused_result_is_dead_lettered_kept_pending_and_replayable(
    fast_stack_no_date: LocalStack,
) -> None:
    # given: a node 10 minutes fast, and a cloud whose answers carry no usable Date (no correction)
    stack = fast_stack_no_date
    env = {**os.environ, **stack.env()}
    listing = [sys.executable, "-m", "coda_bridge", "replay", "--list"]

    # when: a job runs and every delivery of its result is refused 401 for its iat
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok"), 10)
    attempts = int(FAST_LIMITS["CODA_WEBHOOK_MAX_RETRIES"]) + 1
    wait_until(
        lambda: len(stack.cloud.webhooks(job_id, accepted=False)) >= attempts, 60, "every attempt refused"
    )
    wait_until(
        lambda: job_id in subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout,
        60,
        "the refused result to reach the dead-letter queue",
    )

    # then: it was refused for the clock, not dropped: kept with the cloud's reason, no failed status,
    # the stream entry still pending
    listed = subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout
    (line,) = [x for x in listed.splitlines() if x.startswith(job_id)]
    assert line.endswith("cloud answered webhook with 401: token is not yet valid (iat)"), line
    refused = stack.cloud.webhooks(job_id, accepted=False)
    assert len(refused) >= 2 and stack.cloud.result(job_id) is None
    assert status(stack, job_id).get("state") != "failed"
    pending = stack.cloud_redis.client().xpending(stream_key(stack.qpu_id), group_name(stack.qpu_id))
    assert pending["pending"] >= 1

    # and when the clock is fixed, replay delivers it
    stack.children["results"].stop()
    stack.start_process("results", env={"CODA_FAILPOINTS": ""})
    subprocess.run(
        [sys.executable, "-m", "coda_bridge", "replay", job_id], env=env, check=True, capture_output=True
    )
    result = stack.cloud.wait_for_result(job_id, timeout_sec=30)
    assert result["status"] == "completed"
    wait_until(lambda: status(stack, job_id).get("state") == "completed", 20, "the completed status")
