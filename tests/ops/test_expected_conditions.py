"""Expected conditions are one WARNING line naming what to do, under every launcher; never a traceback.

Real processes: ``coda-bridge start`` (forked parts), ``coda-bridge bridge``
(a Procfile line) and ``start --one-process``, against the local cloud with
the broker Redis not answering, or the cloud answering 503 at connect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ops_support import DRAIN_TIMEOUT_SEC, node_env, run_cli

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

BROKER_FIX = "start Redis or set CODA_BROKER_URL"
#: How long the bridge may take to fail twice (seconds): the supervisor restarts it after 1 s, then 2 s.
RESTARTS_SEC = 60


def _down_broker(env: dict[str, str]) -> dict[str, str]:
    """The same node, its broker URL on a port where nothing listens."""
    return {**env, "CODA_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}


@contextmanager
def _started(env: dict[str, str], output: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``coda-bridge start ARGS`` in its own session; Ctrl-C'd (then killed) when the block ends."""
    with output.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "coda_bridge", "start", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield node
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
            try:
                node.wait(DRAIN_TIMEOUT_SEC + 10)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()


def _part_lines(text: str, part: str) -> list[str]:
    return [line for line in text.splitlines() if line[9:].startswith(f"{part} ")]


def test_start_with_the_broker_down_says_so_in_one_line_per_bridge_restart(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # given a node whose broker Redis does not answer
    env = _down_broker(node_env(cloud_stack))
    output = tmp_path / "start.out"
    # when it is started and its bridge has been restarted twice
    with _started(env, output):
        wait_until(lambda: output.read_text().count("bridge (pid") >= 3, RESTARTS_SEC, "three bridge exits")
    text = output.read_text()

    # then nothing printed a traceback
    assert "Traceback" not in text, text[-5000:]
    # and each bridge run said why in one WARNING line naming the fix
    said = [line for line in _part_lines(text, "bridge") if "WARNING" in line]
    exits = text.count("exited with code 1")
    assert exits >= 3, text[-3000:]
    assert len([line for line in said if BROKER_FIX in line]) >= exits, said
    # and no worker logged CRITICAL for it (dramatiq's consumers say so every 3 s)
    assert " CRITICAL " not in text, text[-5000:]
    assert [line for line in text.splitlines() if "Consumer encountered" in line] == []


def test_the_bridge_of_a_procfile_with_the_broker_down_is_one_line(cloud_stack: LocalStack) -> None:
    # given the broker Redis not answering; when `coda-bridge bridge` (the Procfile's line) runs
    done = run_cli("bridge", env=_down_broker(node_env(cloud_stack)))
    # then it exits non-zero with one line naming the fix, no traceback
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and BROKER_FIX in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_one_process_with_the_broker_down_is_one_line(cloud_stack: LocalStack, tmp_path: Path) -> None:
    # given the broker Redis not answering; when the node runs as one process
    output = tmp_path / "one.out"
    with _started(_down_broker(node_env(cloud_stack)), output, "--one-process") as node:
        wait_until(lambda: node.poll() is not None, RESTARTS_SEC, "the one process to stop")
    text = output.read_text()
    # then it stops non-zero after one WARNING line naming the fix, no traceback nor CRITICAL line
    assert node.returncode == 1, text[-3000:]
    assert "Traceback" not in text and " CRITICAL " not in text, text[-5000:]
    assert [line for line in text.splitlines() if "coda_bridge.ops.oneprocess" in line and BROKER_FIX in line]


def test_a_cloud_answering_503_at_connect_is_one_line_per_bridge_run(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # given a cloud that answers every connect with 503
    cloud_stack.cloud.set_fault("connect", 503, count=1000, qpu_id=None)
    output = tmp_path / "start.out"
    try:
        # when the node is started and its bridge has given up twice
        with _started(node_env(cloud_stack), output):
            wait_until(lambda: output.read_text().count("bridge (pid") >= 2, RESTARTS_SEC, "two bridge exits")
    finally:
        cloud_stack.cloud.clear_faults()
    text = output.read_text()
    # then no traceback, and each run ended with one WARNING line saying what happens and what to check
    assert "Traceback" not in text, text[-5000:]
    gave_up = [line for line in _part_lines(text, "bridge") if "gave up after" in line]
    assert len(gave_up) >= 2, text[-3000:]
    assert all("WARNING" in line and "CODA_WEBAPP_URL" in line for line in gave_up), gave_up


#: Long enough for dramatiq's consumers to lose the broker at least twice (they retry every 3 s).
OBSERVE_SEC = 8


def test_a_procfile_worker_with_the_broker_down_says_so_once_not_critical_every_3_s(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # given a jobs worker run as the Procfile's line, its broker Redis not answering
    env = _down_broker(node_env(cloud_stack))
    env.update(CODA_QPU_ID=cloud_stack.qpu_id, CODA_REDIS_URL=cloud_stack.cloud_redis.url)
    dramatiq = str(Path(sys.executable).with_name("dramatiq"))
    output = tmp_path / "jobs.out"
    with output.open("wb") as out:
        worker = subprocess.Popen(
            [dramatiq, "actors", "--processes", "1", "--threads", "1", "--queues", "jobs"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # when its consumers have met the outage for a few of their 3 s retries
        said = "ConsumerThread(jobs): The broker Redis at"
        wait_until(lambda: said in output.read_text(), RESTARTS_SEC, "the outage line")
        deadline = time.monotonic() + OBSERVE_SEC
        wait_until(
            lambda: time.monotonic() > deadline or worker.poll() is not None, OBSERVE_SEC + 5, "a while"
        )
        assert worker.poll() is None, output.read_text()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(DRAIN_TIMEOUT_SEC + 30)
    text = output.read_text()
    # then the consumer said it once, as a WARNING naming the fix; no CRITICAL line, no traceback
    lines = [line for line in text.splitlines() if said in line]
    assert len(lines) == 1 and " WARNING " in lines[0] and BROKER_FIX in lines[0], text
    assert " CRITICAL " not in text and "Traceback" not in text, text
