"""The node's command lines follow ``result_processes``: the results line's ``--processes``, start's parts."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from ops_support import FIRST_JOB_SEC, circuit

from coda_bridge.devtools.stack import START_PARTS, LocalStack
from coda_bridge.ops.process_list import node_processes, start_processes
from coda_bridge.settings import load_settings


def _results_processes(argv: tuple[str, ...]) -> int:
    return int(argv[argv.index("--processes") + 1])


def test_by_default_deliveries_run_in_two_processes(clean_env: pytest.MonkeyPatch) -> None:
    # Given a node that does not set CODA_RESULT_PROCESSES
    settings = load_settings()

    # When its Procfile lines and start's parts are planned
    lines = {spec.name: spec.argv for spec in node_processes(settings)}
    parts = [spec.name for spec in start_processes(settings)]

    # Then the results line runs two worker processes, and start runs results.1 and results.2
    assert _results_processes(lines["results"]) == 2
    assert parts == ["bridge", "jobs", "results.1", "results.2", "control", "web"]


@pytest.mark.parametrize("count", [1, 3])
def test_the_setting_shapes_the_results_line_and_starts_parts(
    clean_env: pytest.MonkeyPatch, count: int
) -> None:
    # Given a node whose environment sets the delivery process count
    clean_env.setenv("CODA_RESULT_PROCESSES", str(count))
    settings = load_settings()

    # When its Procfile lines and start's parts are planned
    lines = {spec.name: spec.argv for spec in node_processes(settings)}
    specs = {spec.name: spec.argv for spec in start_processes(settings)}

    # Then the results line says that many processes, and start runs that many results parts, named
    # as honcho names the copies of a line; the other lines keep one process each
    assert _results_processes(lines["results"]) == count
    assert {_results_processes(lines[name]) for name in ("jobs", "control")} == {1}
    results = [name for name in specs if name.startswith("results")]
    assert results == [f"results.{index}" for index in range(1, count + 1)]
    assert len({specs[name] for name in results}) == 1


def _results_workers(stack: LocalStack) -> list[psutil.Process]:
    """The processes that consume the results queue: the master's children, or start's results parts."""
    if stack.mode == "procfile":
        return psutil.Process(stack.children["results"].pid).children()
    parts = psutil.Process(stack.children["start"].pid).children()
    return [part for part in parts if START_PARTS["results"] in " ".join(part.cmdline())]


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["procfile", "start"])
def test_a_node_with_one_results_process_delivers_results(tmp_path: Path, mode: str) -> None:
    # Given a node whose deliveries run in one process
    env = {"CODA_EXECUTOR_FACTORY": "noop", "CODA_RESULT_PROCESSES": "1"}
    with LocalStack(tmp_path, env=env, mode=mode) as stack:
        # When a job is submitted
        job_id = stack.cloud.submit(stack.qpu_id, circuit(), 100)

        # Then its result reaches the cloud, and one process consumes the results queue
        result = stack.cloud.wait_for_result(job_id, timeout_sec=FIRST_JOB_SEC)
        assert result["status"] == "completed", result
        assert len(_results_workers(stack)) == 1
