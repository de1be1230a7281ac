"""A worker on a second host, with only what docs/operations.md lists; one bridge per consumer name.

Issue 16, items 2 and 3: real processes on a real broker and cloud simulator.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pipeline_support import circuit, stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.proctree import descendants
from coda_bridge.state.registry import live_processes

pytestmark = pytest.mark.e2e

#: How long a process gets to start, or to refuse to.
START_SEC = 30


def _second_host(stack: LocalStack, state: Path, **changes: str | None) -> dict[str, str]:
    """A second host's environment: the docs table's jobs row, and a state directory with nothing in it."""
    env = {
        "CODA_STATE_DIR": str(state),  # holds no credentials: nothing was copied from the bridge host
        "CODA_NODE_TOKEN": "",
        "CODA_BROKER_URL": stack.broker_redis.url,
        "CODA_QPU_ID": stack.qpu_id,
        "CODA_REDIS_URL": stack.cloud_redis.url,
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One whole node for the tests that start a process of their own beside it (a second host's
    worker, a second bridge); each leaves the node's bridge running."""
    workdir = tmp_path_factory.mktemp("second-host")
    with LocalStack(workdir, env=stack_env(workdir)) as stack:
        yield stack


def _registered(stack: LocalStack, role: str, root_pid: int) -> bool:
    family = {root_pid, *descendants(root_pid)}
    client = stack.broker_redis.client()
    try:
        return any(p.role == role and p.pid in family for p in live_processes(client, stack.qpu_id))
    finally:
        client.close()


def test_a_jobs_worker_with_only_the_qpu_broker_and_cloud_redis_runs_jobs_end_to_end(
    node: LocalStack, tmp_path: Path
) -> None:
    stack = node
    # given the stack's own executor worker stopped, and one started as a second host would be
    assert stack.children["jobs"].stop() is not None
    state = tmp_path / "host2"
    stack.start_process("jobs#host2", stack.specs()["jobs"], env=_second_host(stack, state))
    wait_until(lambda: _registered(stack, "jobs", stack.children["jobs#host2"].pid), START_SEC, "host2")
    # when jobs are submitted
    ids = [stack.cloud.submit(stack.qpu_id, circuit("ok"), 100) for _ in range(3)]
    results = stack.cloud.wait_for_results(ids, timeout_sec=60)
    # then each completes (run by the second-host worker, delivered by the results worker)
    assert {r["status"] for r in results.values()} == {"completed"}, stack.log_tail("jobs#host2")
    assert stack.children["jobs#host2"].alive()
    # and the second host never held a key
    assert not (state / "coda-private-key").exists()
    assert "Traceback" not in stack.log_tail("jobs#host2", 400)


def _refusal(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], list[psutil.Process]]:
    done = subprocess.run(
        [sys.executable, "-m", "coda_bridge", "worker", "jobs"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_SEC,
    )
    marker = env["CODA_STATE_DIR"]
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CODA_STATE_DIR") == marker:
                left.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return done, left


def test_a_jobs_worker_without_the_cloud_redis_url_refuses_to_start(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # given a second host's jobs worker that was given the QPU but not the cloud's Redis
    env = {**cloud_stack.env(), **_second_host(cloud_stack, tmp_path / "host2", CODA_REDIS_URL=None)}
    # when it starts
    done, left = _refusal(env)
    # then it exits 78 at once with one error line naming the variable, no traceback, nothing left running
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 78, done.stderr
    assert len(errors) == 1 and "CODA_REDIS_URL not set" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert left == []


def test_a_second_bridge_for_the_same_qpu_and_consumer_name_refuses_naming_the_live_one(
    node: LocalStack,
) -> None:
    stack = node
    first = stack.children["bridge"]
    wait_until(lambda: _registered(stack, "bridge", first.pid), START_SEC, "the first bridge's registration")
    # given a running bridge; when another bridge of the same QPU and consumer name starts
    stack.start_process("bridge#2", stack.specs()["bridge"], env={"CODA_NODE_TOKEN": ""})
    second = stack.children["bridge#2"]
    wait_until(lambda: not second.alive(), START_SEC, "the second bridge to exit")
    # then it exits 78 naming the live one, which keeps running
    log = stack.log_tail("bridge#2")
    assert second.process.returncode == 78, log
    assert f"pid {first.pid}" in log and "CODA_CONSUMER_NAME" in log
    assert "Traceback" not in log
    assert first.alive()
