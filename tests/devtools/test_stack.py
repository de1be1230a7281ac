"""LocalStack's two ends: ``stop()`` lets the node drain; leaving its ``with`` block kills it outright."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.process_list import PREPARED_AHEAD
from coda_bridge.ops.proctree import alive, descendants

pytestmark = pytest.mark.e2e

#: Longest wait for the worker processes to boot on a busy machine.
BOOT_SEC = 30
WORKERS = ("jobs", "results", "control")


def _booted(stack: LocalStack, name: str) -> bool:
    return b"Worker process is ready for action" in (stack.workdir / f"{name}.log").read_bytes()


def test_stop_drains_a_process_and_leaving_the_block_kills_the_rest_with_their_descendants(
    tmp_path: Path,
) -> None:
    # Given a node of the Procfile's lines, its workers booted (each a dramatiq master and its workers)
    with LocalStack(tmp_path, env={"CODA_EXECUTOR_FACTORY": "noop"}) as stack:
        wait_until(lambda: all(_booted(stack, name) for name in WORKERS), BOOT_SEC, "the workers to boot")
        family = {name: [child.pid, *descendants(child.pid)] for name, child in stack.children.items()}
        assert len(family["results"]) > 1, family
        # When one process is stopped, it drains and exits 0
        assert stack.children["jobs"].stop() == 0
        # and the block is left with the others running
    # Then every other one was killed (no drain), and nothing of any of them is left
    codes = {name: child.process.returncode for name, child in stack.children.items()}
    killed = -signal.SIGKILL
    assert codes == {"bridge": killed, "jobs": 0, "results": killed, "control": killed}
    assert [pid for pids in family.values() for pid in pids if alive(pid)] == []


def test_the_procfile_lines_follow_the_stack_s_own_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a stack whose node drains in 2 s, runs two jobs at once and delivers in one process (the
    # test process has none of these)
    env = {
        "CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC": "2",
        "CODA_EXECUTOR_CONCURRENCY": "2",
        "CODA_RESULT_PROCESSES": "1",
    }
    stack = LocalStack(tmp_path, env=env)

    # When it builds the Procfile's command lines
    specs = stack.specs()

    # Then its workers wait out its own drain timeout, its jobs worker has its concurrency's threads,
    # and its results line runs one process
    for name in ("jobs", "results", "control"):
        argv = list(specs[name].argv)
        assert argv[argv.index("--worker-shutdown-timeout") + 1] == "2000", name
    jobs = list(specs["jobs"].argv)
    assert int(jobs[jobs.index("--threads") + 1]) == 2 + PREPARED_AHEAD
    results = list(specs["results"].argv)
    assert results[results.index("--processes") + 1] == "1"
