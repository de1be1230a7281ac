"""The probes app under gunicorn beside a real node: readiness, metrics, dashboard, control socket."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pipeline_support import circuit
from prometheus_client.parser import text_string_to_metric_families

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import LocalStack, descendants, wait_until
from coda_bridge.ops.process_list import ProcessSpec

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
READY_FIELDS = {"ready", "vpn_state", "redis_healthy", "current_job"}
JWT = re.compile(r"eyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]{6,}")
DASHBOARD_PREFIX = "/ops/queues"


def base(stack: LocalStack, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or stack.web_port}"


def get(stack: LocalStack, path: str, port: int | None = None) -> requests.Response | None:
    try:
        return requests.get(base(stack, port) + path, timeout=10, allow_redirects=False)
    except requests.RequestException:
        return None


def ready_status(stack: LocalStack, wanted: int, seen: list[str]) -> dict[str, Any] | None:
    """The /ready body once it answers ``wanted``; every body seen is kept for the secret check."""
    response = get(stack, "/ready")
    if response is None:
        return None
    seen.append(response.text)
    body: dict[str, Any] = response.json()
    assert READY_FIELDS <= set(body), body
    return body if response.status_code == wanted else None


def wait_ready(stack: LocalStack, seen: list[str] | None = None, timeout_sec: float = 30) -> dict[str, Any]:
    body: dict[str, Any] = wait_until(
        lambda: ready_status(stack, 200, [] if seen is None else seen), timeout_sec, "/ready to answer 200"
    )
    return body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def heartbeats_total(text: str) -> float:
    return samples(text)[("coda_bridge_heartbeats_total", ())]


def web_workers(stack: LocalStack) -> list[int]:
    return descendants(stack.children["web"].pid)


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` for the duration of the block."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def scrape_each_worker(stack: LocalStack, rounds: int = 3) -> list[tuple[int, str]]:
    """Scrape /metrics ``rounds`` times from each gunicorn worker in turn (the others held stopped)."""
    workers = web_workers(stack)
    scrapes = []
    for _ in range(rounds):
        for pid in workers:
            with stopped([p for p in workers if p != pid]):
                response = get(stack, "/metrics")
                assert response is not None and response.status_code == 200
                scrapes.append((pid, response.text))
    return scrapes


def test_metrics_agree_across_two_gunicorn_workers(web_stack: LocalStack) -> None:
    stack = web_stack
    wait_ready(stack)
    assert len(web_workers(stack)) == 2
    jobs_worker = [stack.children["jobs"].pid, *descendants(stack.children["jobs"].pid)]
    dead_letter_job = f"dl-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 500, seconds=120, job_id=dead_letter_job)

    with stopped(jobs_worker):  # the jobs wait in the local queue while the worker is stopped
        ids = [stack.cloud.submit(stack.qpu_id, circuit("ok"), 10) for _ in range(3)]
        ids += [stack.cloud.submit(stack.qpu_id, circuit("sleep:0.4"), 10) for _ in range(2)]
        ids.append(stack.cloud.submit(stack.qpu_id, circuit("raise"), 10))
        stack.cloud.submit(stack.qpu_id, circuit("ok"), 10, job_id=dead_letter_job)
        broker = stack.broker_redis.client()
        jobs_queue = f"coda-bridge:{stack.qpu_id}:dq:jobs"
        wait_until(lambda: broker.llen(jobs_queue) == 7, 15, "seven jobs in the local queue")
        waiting = scrape_each_worker(stack, rounds=1)

    for _, text in waiting:
        assert samples(text)[("coda_bridge_queue_depth", (("queue", "jobs"),))] == 7

    results = stack.cloud.wait_for_results(ids, timeout_sec=30)
    assert [results[j]["status"] for j in ids] == ["completed"] * 5 + ["failed"]
    wait_until(
        lambda: samples(get(stack, "/metrics").text)[("coda_bridge_webhook_dead_letters_total", ())] == 1,  # type: ignore[union-attr]
        30,
        "the refused result to be dead-lettered",
    )

    scrapes = scrape_each_worker(stack, rounds=3)
    assert len({pid for pid, _ in scrapes}) == 2
    parsed = [samples(text) for _, text in scrapes]
    quiet = [
        ("coda_bridge_jobs_total", (("outcome", "completed"),)),
        ("coda_bridge_jobs_total", (("outcome", "failed"),)),
        ("coda_bridge_jobs_total", (("outcome", "cancelled"),)),
        ("coda_bridge_executor_seconds_total", ()),
        ("coda_bridge_webhook_attempts_total", ()),
        ("coda_bridge_webhook_failures_total", ()),
        ("coda_bridge_webhook_dead_letters_total", ()),
        ("coda_bridge_queue_depth", (("queue", "jobs"),)),
        ("coda_bridge_dead_letter_depth", (("queue", "results"),)),
    ]
    for key in quiet:
        assert len({p[key] for p in parsed}) == 1, (
            f"{key} differs between scrapes: {[p[key] for p in parsed]}"
        )
    last = parsed[-1]
    assert last[("coda_bridge_jobs_total", (("outcome", "completed"),))] == 5
    assert last[("coda_bridge_jobs_total", (("outcome", "failed"),))] == 1
    assert last[("coda_bridge_executor_seconds_total", ())] >= 0.8
    assert last[("coda_bridge_webhook_attempts_total", ())] == 6 + 4  # one each, and 1 + 3 retries
    assert last[("coda_bridge_webhook_dead_letters_total", ())] == 1
    assert last[("coda_bridge_dead_letter_depth", (("queue", "results"),))] == 1
    assert last[("coda_bridge_queue_depth", (("queue", "jobs"),))] == 0
    assert last[("coda_bridge_vpn_state", (("state", "ready"),))] == 1
    assert last[("coda_bridge_seconds_since_heartbeat", ())] < 3
    beats = [p[("coda_bridge_heartbeats_total", ())] for p in parsed]
    assert beats == sorted(beats), f"heartbeat counter not monotonic: {beats}"
    wait_until(
        lambda: all(heartbeats_total(t) > beats[-1] for _, t in scrape_each_worker(stack, rounds=1)),
        10,
        "both workers to count the next heartbeat",
    )


@pytest.mark.skipif(
    importlib.util.find_spec("dramatiq_dashboard") is None,
    reason="dramatiq-dashboard is not installed (pip install --no-deps dramatiq-dashboard==0.4.0)",
)
def test_dashboard_is_served_under_its_prefix(web_stack: LocalStack) -> None:
    stack = web_stack
    wait_ready(stack)

    index = get(stack, DASHBOARD_PREFIX + "/")
    queue = get(stack, DASHBOARD_PREFIX + "/queues/jobs")

    assert index is not None and index.status_code == 200
    assert f'href="{DASHBOARD_PREFIX}/queues/jobs"' in index.text
    assert queue is not None and queue.status_code == 200
    assert get(stack, "/dashboard/").status_code == 404  # type: ignore[union-attr]


def control_sockets(stack: LocalStack) -> list[Path]:
    roots = [Path(stack.extra_env["HOME"]), Path(stack.extra_env["XDG_RUNTIME_DIR"])]
    return [p for root in roots for p in root.rglob("*") if p.name.endswith(".ctl") or p.is_socket()]


def test_two_web_instances_side_by_side_open_no_control_socket(web_stack: LocalStack) -> None:
    stack = web_stack
    port = free_port()
    deploy_conf = str(REPO / "deploy" / "gunicorn.conf.py")
    app = "coda_bridge.ops.webentry:web_app()"
    second = ProcessSpec("web#2", (sys.executable, "-m", "gunicorn", "-c", deploy_conf, app))
    stack.start_process("web#2", second, env={"CODA_PORT": str(port)})
    try:
        wait_until(lambda: (r := get(stack, "/health", port)) and r.status_code == 200, 30, "the second web")
        wait_ready(stack)
        assert stack.children["web"].alive() and stack.children["web#2"].alive()
        assert get(stack, "/health").status_code == 200  # type: ignore[union-attr]
        assert len(descendants(stack.children["web#2"].pid)) == 2
        assert control_sockets(stack) == []
    finally:
        stack.children["web#2"].stop()

    # the check above can fail: gunicorn without our config does open one in this HOME
    port = free_port()
    plain = ProcessSpec("web#3", (sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", app))
    stack.start_process("web#3", plain)
    try:
        wait_until(lambda: control_sockets(stack), 30, "gunicorn's default control socket")
    finally:
        stack.children["web#3"].stop()


def test_ready_503_while_the_bridge_does_not_read_the_stream(web_stack: LocalStack) -> None:
    stack = web_stack
    wait_ready(stack)
    bridge = stack.children["bridge"].pid

    with stopped([bridge]):
        body = wait_until(lambda: ready_status(stack, 503, []), 10, "/ready to answer 503")
        assert "job stream" in body["reason"]
        assert body["vpn_state"] == "ready" and body["redis_healthy"] is True

    wait_ready(stack, timeout_sec=10)


def secrets_of(stack: LocalStack) -> list[str]:
    pem = (stack.state_dir / "coda-private-key").read_text()
    key_lines = [line for line in pem.splitlines() if len(line) >= 32 and "-----" not in line]
    assert key_lines, "the private key file holds no key"
    return [stack.extra_env["CODA_NODE_TOKEN"], *key_lines]


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret leaked into {where}"
    assert not JWT.search(text), f"a JWT leaked into {where}"


def test_ready_follows_the_cloud_redis_and_leaks_no_secret(web_stack: LocalStack) -> None:
    stack = web_stack
    seen: list[str] = []
    assert wait_ready(stack, seen)["redis_healthy"] is True

    bridge_log = stack.workdir / "bridge.log"
    outages_before = bridge_log.read_text().count("Redis unavailable")
    stack.cloud_redis.stop()
    try:
        down = wait_until(lambda: ready_status(stack, 503, seen), 15, "/ready to answer 503")
        assert down["redis_healthy"] is False and down["ready"] is False
        outage_metrics = get(stack, "/metrics")
        # keep it down until the bridge gave up on its retries and is backing off
        wait_until(
            lambda: bridge_log.read_text().count("Redis unavailable") > outages_before,
            20,
            "the bridge to notice the outage",
        )
    finally:
        stack.cloud_redis.start()  # same port, empty: the stream and the consumer group are gone

    back = wait_ready(stack, seen, timeout_sec=30)
    assert back["redis_healthy"] is True
    groups = stack.cloud_redis.client().xinfo_groups(f"qpu:{stack.qpu_id}:jobs")
    assert [g["name"] for g in groups] == [f"qpu:{stack.qpu_id}:workers"]
    job = stack.cloud.submit(stack.qpu_id, circuit("ok"), 10)
    assert stack.cloud.wait_for_result(job, timeout_sec=20)["status"] == "completed"

    secrets = secrets_of(stack)
    assert len(seen) >= 3
    for text in seen:
        assert_no_secret(text, secrets, "a /ready body")
    for path in ("/health", "/metrics", DASHBOARD_PREFIX + "/", DASHBOARD_PREFIX + "/queues/jobs"):
        response = get(stack, path)
        assert response is not None
        assert_no_secret(response.text, secrets, path)
    assert outage_metrics is not None
    assert_no_secret(outage_metrics.text, secrets, "/metrics during the outage")
    for log in stack.workdir.glob("web*.log"):
        assert_no_secret(log.read_text(errors="replace"), secrets, log.name)
