"""dramatiq's metrics from real worker processes, through /metrics of gunicorn's two workers alike."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest
import requests
from pipeline_support import circuit
from prometheus_client.parser import text_string_to_metric_families

from coda_bridge.devtools.stack import LocalStack, descendants, wait_until

pytestmark = pytest.mark.e2e

#: How long the node gets to run the jobs and deliver their results.
RESULTS_WAIT_SEC = 30.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(stack: LocalStack) -> str:
    response = requests.get(f"http://127.0.0.1:{stack.web_port}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def scrape_each_worker(stack: LocalStack) -> dict[int, str]:
    """One /metrics body from each gunicorn worker (the others held stopped meanwhile)."""
    workers = descendants(stack.children["web"].pid)
    bodies = {}
    for pid in workers:
        with stopped([p for p in workers if p != pid]):
            bodies[pid] = scrape(stack)
    return bodies


def ready(stack: LocalStack) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def actor(name: str, queue: str) -> tuple[tuple[str, str], ...]:
    return (("actor_name", name), ("queue_name", queue))


def test_real_workers_publish_dramatiq_metrics_that_both_gunicorn_workers_serve(
    web_stack: LocalStack,
) -> None:
    stack = web_stack
    wait_until(lambda: ready(stack), RESULTS_WAIT_SEC, "/ready to answer 200")
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok"), 10) for _ in range(3)]
    results = stack.cloud.wait_for_results(ids, timeout_sec=RESULTS_WAIT_SEC)
    assert [results[j]["status"] for j in ids] == ["completed"] * 3
    delivered = actor("deliver", "results")
    wait_until(
        lambda: parse(scrape(stack)).get(("dramatiq_messages_total", delivered), 0) >= 3,
        RESULTS_WAIT_SEC,
        "the delivery worker to count its messages",
    )

    bodies = scrape_each_worker(stack)

    assert len(bodies) == 2
    seen = [parse(body) for body in bodies.values()]
    for samples in seen:
        assert samples[("dramatiq_messages_total", actor("execute", "jobs"))] >= 3
        assert samples[("dramatiq_message_duration_milliseconds_count", actor("execute", "jobs"))] >= 3
        assert samples[("dramatiq_messages_total", actor("heartbeat", "control"))] >= 1
        assert samples[("dramatiq_messages_inprogress", actor("execute", "jobs"))] == 0
        assert samples[("coda_bridge_web_processes", ())] == 3  # the gunicorn master and its two workers
        # the node's own histograms, fed by the executor and the delivery worker
        assert samples[("coda_bridge_job_duration_seconds_count", ())] >= 3
        assert samples[("coda_bridge_xadd_to_result_seconds_count", (("status", "completed"),))] >= 3
        assert samples[("coda_bridge_webhook_duration_seconds_count", (("outcome", "accepted"),))] >= 3
        assert samples[("coda_bridge_delivery_attempts_count", (("outcome", "delivered"),))] >= 3
    # the process metrics are the probes app's as one service, whichever worker answered
    assert len({samples[("process_start_time_seconds", ())] for samples in seen}) == 1
    assert len({samples[("dramatiq_messages_total", actor("execute", "jobs"))] for samples in seen}) == 1


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="needs promtool (Debian: apt-get install prometheus)"
)
def test_promtool_lints_the_body_gunicorn_serves(web_stack: LocalStack) -> None:
    wait_until(lambda: ready(web_stack), RESULTS_WAIT_SEC, "/ready to answer 200")
    body = scrape(web_stack)

    done = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=60, check=False
    )

    findings = set((done.stdout + done.stderr).splitlines())
    assert findings <= {
        'dramatiq_message_duration_milliseconds use base unit "seconds" instead of "milliseconds"'
    }, findings
