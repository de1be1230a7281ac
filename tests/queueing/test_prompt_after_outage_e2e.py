"""After an outage of the cloud's HTTP API, the results waiting on their backoff go out within seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pipeline_support import circuit, stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

#: Enough refused attempts per result that the next one waits 8-16 s (dramatiq backoff with jitter), longer
#: than PROMPT_SEC.
REFUSALS_EACH = 4
#: Results must all be at the cloud this soon after it answers again.
PROMPT_SEC = 6.0
JOBS = 8


@pytest.fixture
def patient_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A node whose deliveries back off as in production (up to 5 minutes), with the probes app."""
    env = stack_env(tmp_path, CODA_WEBHOOK_MAX_BACKOFF_SEC="300", CODA_WEBHOOK_MAX_RETRIES="20")
    with LocalStack(tmp_path, env=env, web=True) as node:
        yield node


def _ready(stack: LocalStack) -> dict[str, object]:
    """/ready's body; empty while the probes app does not listen yet (the stack does not wait for it)."""
    try:
        body: dict[str, object] = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).json()
    except requests.RequestException:
        return {}
    return body


def test_results_waiting_out_an_outage_are_delivered_within_seconds_of_the_cloud_answering(
    patient_stack: LocalStack,
) -> None:
    # given: the cloud's HTTP API answers 503 to everything while jobs finish
    stack = patient_stack
    stack.cloud.set_fault("all", 503, count=100_000)
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok"), 10) for _ in range(JOBS)]

    def refused_enough() -> bool:
        refused = stack.cloud.webhooks(qpu_id=None, accepted=False)
        return all(sum(1 for w in refused if w.get("job_id") == j) >= REFUSALS_EACH for j in ids)

    wait_until(refused_enough, 120, f"{REFUSALS_EACH} refused deliveries of each result")
    down = wait_until(
        lambda: (body := _ready(stack)).get("cloud_api_reachable") is False and body, 20, "/ready"
    )

    # when: the cloud answers again
    stack.cloud.clear_faults()
    back = time.monotonic()
    stack.cloud.wait_for_results(ids, timeout_sec=120)
    took = time.monotonic() - back

    # then: every result is there within seconds, not each after its own backoff; /ready said why it failed
    assert took < PROMPT_SEC, f"results took {took:.1f} s after the cloud came back"
    assert "the cloud's API" in str(down["reason"])
    wait_until(lambda: _ready(stack).get("cloud_api_reachable") is True, 20, "/ready to see the cloud back")
