"""The repo's Procfile under `honcho start`: jobs end to end, and a drain that holds on SIGTERM."""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from ops_support import (
    DRAIN_TIMEOUT_SEC,
    FIRST_JOB_SEC,
    circuit,
    executor_runs,
    node_env,
    write_slow_executor,
)

from coda_bridge.devtools.localredis import find_redis_server, free_port
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.daemon import ready_url
from coda_bridge.ops.proctree import alive, kill_tree, process_tree
from coda_bridge.state.registry import ready_jobs_workers

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


def _procfile(tmp_path: Path, redis_line: str | None) -> Path:
    """The repo Procfile with only its ``redis`` line replaced (or dropped)."""
    lines = []
    for line in PROCFILE.read_text().splitlines():
        if line.startswith("redis:"):
            if redis_line is not None:
                lines.append(redis_line)
            continue
        lines.append(line)
    path = tmp_path / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def _honcho(procfile: Path, env: dict[str, str], output: Path, *names: str) -> subprocess.Popen[bytes]:
    with output.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(procfile), "--no-colour", *names],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=procfile.parent,
        )


def _ready_status(env: dict[str, str]) -> int | None:
    """The status of the node's /ready, ``None`` while the probes app does not answer."""
    try:
        return requests.get(ready_url("127.0.0.1", int(env["CODA_PORT"])), timeout=10).status_code
    except requests.RequestException:
        return None


def _kill_if_running(honcho: subprocess.Popen[bytes]) -> None:
    """A failed test still leaves nothing behind: SIGKILL honcho and every process below it."""
    if honcho.poll() is None:
        kill_tree(process_tree(honcho.pid))
        honcho.wait()


def _stop(honcho: subprocess.Popen[bytes], timeout_sec: float) -> tuple[list[int], float]:
    """SIGTERM honcho; the processes it ran (collected first) and how long it took to exit."""
    tree = process_tree(honcho.pid)
    signalled = time.monotonic()
    honcho.send_signal(signal.SIGTERM)
    honcho.wait(timeout_sec)
    return tree, time.monotonic() - signalled


@pytest.mark.e2e
def test_honcho_start_on_the_procfile_runs_jobs_end_to_end(cloud_stack: LocalStack, tmp_path: Path) -> None:
    port = free_port()
    redis_line = f"redis: {shlex.quote(find_redis_server())} --port {port} --save '' --appendonly no"
    env = node_env(
        cloud_stack,
        CODA_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        CODA_EXECUTOR_FACTORY="coda_bridge.executors.simulator:create_executor",
    )
    output = tmp_path / "honcho.out"
    honcho = _honcho(_procfile(tmp_path, redis_line), env, output)
    try:
        cloud = cloud_stack.cloud
        ids = [cloud.submit(cloud_stack.qpu_id, circuit(2), 200) for _ in range(5)]
        results = cloud.wait_for_results(ids, timeout_sec=90)
        assert all(results[j]["status"] == "completed" for j in ids)
        assert all(sum(results[j]["counts"].values()) == 200 for j in ids)
        names = ("redis", "bridge", "jobs", "results", "control", "web")
        wait_until(
            lambda: all(re.search(rf"{n}\.1 +\| ", output.read_text()) for n in names),
            30,
            "output from every Procfile process",
        )
        # and the jobs line's worker counts as the node's ready jobs worker: /ready answers 200
        wait_until(lambda: _ready_status(env) == 200, 30, "/ready to answer 200")
        with contextlib.closing(redis.Redis.from_url(env["CODA_BROKER_URL"])) as broker:
            assert [info.role for info in ready_jobs_workers(broker, cloud_stack.qpu_id)] == ["jobs"]
        tree, _ = _stop(honcho, 30)
    finally:
        _kill_if_running(honcho)
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process honcho ran to be gone")


@pytest.mark.e2e
def test_sigterm_to_honcho_drains_a_running_job(cloud_stack: LocalStack, tmp_path: Path) -> None:
    # The broker must outlive the workers for a drain, as a system Redis does: no redis line here.
    # honcho SIGKILLs what still runs 5 s after the first process exited: a 2 s job fits
    env = node_env(cloud_stack, **write_slow_executor(tmp_path / "executor", seconds=2))
    output = tmp_path / "honcho.out"
    honcho = _honcho(_procfile(tmp_path, None), env, output)
    cloud = cloud_stack.cloud
    try:
        warm = cloud.submit(cloud_stack.qpu_id, circuit(), 10)
        assert cloud.wait_for_result(warm, timeout_sec=FIRST_JOB_SEC)["status"] == "completed"
        job = cloud.submit(cloud_stack.qpu_id, circuit(), 10)
        wait_until(lambda: cloud.job(job)["status"].get("state") == "executing", 30, "the job to start")
        tree, took = _stop(honcho, DRAIN_TIMEOUT_SEC + 10)
    finally:
        _kill_if_running(honcho)
    text = output.read_text()
    assert took < DRAIN_TIMEOUT_SEC, f"honcho took {took:.1f} s"
    assert "SIGKILL" not in text, text[-3000:]  # nobody had to be killed
    assert re.search(r"jobs\.1 +\| .*Worker has been shut down", text), text[-3000:]
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process honcho ran to be gone")
    assert cloud.job(job)["status"].get("state") != "failed"
    # honcho stops the delivery worker at the same moment as the executor: the draining executor
    # worker delivers the result itself.
    assert cloud.result(job) is not None

    # A later start finds nothing left to deliver: one delivery, no rerun.
    output = tmp_path / "honcho-results.out"
    honcho = _honcho(_procfile(tmp_path, None), env, output, "results")
    try:
        delivered = cloud.wait_for_result(job, timeout_sec=60)
        tree, _ = _stop(honcho, 30)
    finally:
        _kill_if_running(honcho)
    assert delivered["status"] == "completed"
    assert len(cloud.webhooks(job, accepted=True)) == 1
    assert executor_runs(tmp_path / "executor") == 2  # the warm-up job and this one, never a rerun
    wait_until(lambda: not any(alive(p) for p in tree), 10, "the delivery worker to be gone")


def _delivered(cloud: Any, qpu_id: str) -> int:
    return sum(1 for result in cloud.results(qpu_id).values() if result)


@pytest.mark.e2e
def test_ctrl_c_under_honcho_with_jobs_in_flight_then_a_new_start_delivers_every_job_once(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # Given the shipped Procfile, its throw-away broker included (no persistence: Ctrl-C loses it)
    port = free_port()
    redis_line = f"redis: {shlex.quote(find_redis_server())} --port {port} --save '' --appendonly no"
    procfile = _procfile(tmp_path, redis_line)
    env = node_env(
        cloud_stack,
        CODA_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        **write_slow_executor(tmp_path / "executor", seconds=0.3),
    )
    cloud = cloud_stack.cloud
    honcho = _honcho(procfile, env, tmp_path / "honcho-1.out")
    try:
        ids = [cloud.submit(cloud_stack.qpu_id, circuit(), 10) for _ in range(12)]
        wait_until(
            lambda: _delivered(cloud, cloud_stack.qpu_id) >= 3, FIRST_JOB_SEC, "a few results to arrive"
        )
        # When Ctrl-C reaches every process at once, with most jobs still waiting or running
        honcho.send_signal(signal.SIGINT)
        honcho.wait(60)
    finally:
        _kill_if_running(honcho)
    assert _delivered(cloud, cloud_stack.qpu_id) < len(ids), "jobs were still in flight at Ctrl-C"

    # Then a new start finishes every one of them, each delivered exactly once
    honcho = _honcho(procfile, env, tmp_path / "honcho-2.out")
    try:
        results = cloud.wait_for_results(ids, timeout_sec=120)
        tree, _ = _stop(honcho, 60)
    finally:
        _kill_if_running(honcho)
    assert all(results[j]["status"] == "completed" for j in ids)
    assert [j for j in ids if len(cloud.webhooks(j, accepted=True)) != 1] == []
    wait_until(lambda: not any(alive(p) for p in tree), 10, "every process honcho ran to be gone")
