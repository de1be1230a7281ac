"""A broker full from the start, and one that evicts (issue 23's rows "broker started with maxmemory 2mb"
and "broker allkeys-lru").  A real node (bridge, workers, probes app) on a private broker redis-server
whose memory settings are made before the node starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pipeline_support import FAST_LIMITS, circuit, executor_runs, stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

#: The broker's limit at start, as in the row of issue 23 (the node's own jobs fill it).
FULL_MAXMEMORY = "2mb"
#: Jobs sent at once, as in the row: more than 2 MB of messages, claims and records.
JOBS = 300
#: How long the broker stays at its limit once /ready named it, before memory is raised.
FULL_SEC = 5
#: The reconcile period of this node (claim_idle_sec / 3), and what a busy machine adds to it.
RECONCILE_SEC = 5 / 3
MARGIN_SEC = 60


def ready_body(stack: LocalStack) -> dict[str, Any]:
    try:
        body: dict[str, Any] = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).json()
    except requests.RequestException as exc:
        return {"reason": f"no answer: {exc}"}
    return body


@pytest.fixture
def full_node(tmp_path: Path) -> Iterator[LocalStack]:
    """A node whose broker has maxmemory 2mb under noeviction from before the node starts."""
    env = stack_env(tmp_path, **FAST_LIMITS, CODA_READY_STREAM_STALE_SEC="30")
    stack = LocalStack(tmp_path, env=env, web=True)
    try:
        stack.start(processes=False)
        broker = stack.broker_redis.client()
        broker.config_set("maxmemory-policy", "noeviction")
        broker.config_set("maxmemory", FULL_MAXMEMORY)
        stack.start_node()
        yield stack
    finally:
        stack.stop(drain=False)  # thrown away whole: killed, not drained


def test_a_broker_full_from_the_start_is_named_and_every_job_completes_once_after_memory_is_raised(
    full_node: LocalStack,
) -> None:
    node, broker = full_node, full_node.broker_redis.client()
    # given a node started on a broker with maxmemory 2mb, and 300 jobs sent to it
    tags = [f"f{n}" for n in range(JOBS)]
    jobs = [node.cloud.submit(node.qpu_id, circuit("ok", tag=tag), 100) for tag in tags]
    # then /ready names the refusal once the broker is full, never "does not answer" while it answers
    reasons: list[str] = []

    def oom_named() -> bool:
        reasons.append(str(ready_body(node).get("reason")))
        return "the local broker refuses writes: OOM" in reasons[-1]

    wait_until(oom_named, 90, "/ready to name OOM")
    held_until = time.monotonic() + FULL_SEC
    while time.monotonic() < held_until:  # jobs go on at the limit a while (memory comes and goes there)
        oom_named()
    assert not [r for r in reasons if "does not answer" in r], reasons
    # when memory is raised (no restart)
    broker.config_set("maxmemory", "0")
    raised = time.monotonic()
    # then every job completes within a reconcile period and a margin, each run once on the device
    results = node.cloud.wait_for_results(jobs, timeout_sec=RECONCILE_SEC + MARGIN_SEC)
    print(f"all {JOBS} jobs completed {time.monotonic() - raised:.1f} s after memory was raised")
    assert {r["status"] for r in results.values()} == {"completed"}
    assert {t: n for t in tags if (n := executor_runs(node, t)) != 1} == {}
    wait_until(lambda: ready_body(node).get("ready") is True, 30, "/ready to be ready again")


@pytest.fixture
def evicting_node(tmp_path: Path) -> Iterator[LocalStack]:
    """A node whose broker has maxmemory-policy allkeys-lru from the start."""
    env = stack_env(tmp_path, **FAST_LIMITS, CODA_READY_STREAM_STALE_SEC="30")
    stack = LocalStack(tmp_path, env=env, web=True)
    try:
        stack.start(processes=False)
        stack.broker_redis.client().config_set("maxmemory-policy", "allkeys-lru")
        stack.start_node()
        yield stack
    finally:
        stack.stop(drain=False)  # thrown away whole: killed, not drained


def test_a_broker_that_evicts_is_named_at_start_by_the_bridge_and_in_ready(evicting_node: LocalStack) -> None:
    node = evicting_node
    # given a node started on a broker with allkeys-lru
    # then the bridge's log names it once with the fix, and /ready's body has the policy
    bridge_log = node.children["bridge"].log_path
    line = "The local broker evicts keys (maxmemory-policy allkeys-lru"
    wait_until(lambda: line in bridge_log.read_text(errors="replace"), 60, "the bridge's warning")
    wait_until(lambda: ready_body(node).get("broker_eviction_policy") == "allkeys-lru", 60, "/ready's field")
    [logged] = [entry for entry in bridge_log.read_text(errors="replace").splitlines() if line in entry]
    assert "WARNING" in logged and "jobs run twice" in logged and "set maxmemory-policy noeviction" in logged
