"""`CODA_LOG_FORMAT=json coda-bridge start -d`: every line of the log file is one JSON object, UTC time."""

from __future__ import annotations

import datetime
import json
import textwrap
from pathlib import Path

import pytest
from ops_support import circuit, node_env, run_cli

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.identity.credentials import StatePaths

pytestmark = pytest.mark.e2e

#: What a raw print of the executor says (not a log record: the supervisor must wrap it).
RAW_LINE = "raw line printed by the executor"


def _printing_executor(directory: Path) -> dict[str, str]:
    """An executor module that prints a plain line per job; the environment that selects it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "printing_executor.py").write_text(
        textwrap.dedent(
            f"""
            class Executor:
                def run(self, ir, shots):
                    print({RAW_LINE!r}, flush=True)
                    counts = {{"0" * len(ir.measurements): shots}}
                    return {{"counts": counts, "execution_time_ms": 1, "shots_completed": shots}}

            def create_executor():
                return Executor()
            """
        )
    )
    return {"PYTHONPATH": str(directory), "CODA_EXECUTOR_FACTORY": "printing_executor:create_executor"}


def _utc(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    assert moment.utcoffset() == datetime.timedelta(0), text
    return moment


@pytest.mark.parametrize("one_process", [False, True], ids=["start", "one-process"])
def test_every_line_of_a_json_daemon_log_is_a_json_object_with_an_iso_utc_time(
    cloud_stack: LocalStack, tmp_path: Path, one_process: bool
) -> None:
    # given a node started in the background with JSON logs, whose executor prints a raw line
    env = node_env(cloud_stack, CODA_LOG_FORMAT="json", **_printing_executor(tmp_path / "executor"))
    paths = StatePaths(cloud_stack.state_dir)
    started = run_cli("start", "-d", *(["--one-process"] if one_process else []), env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        # when a job runs and the node is stopped
        job_id = cloud_stack.cloud.submit(cloud_stack.qpu_id, circuit(1), 10)
        assert cloud_stack.cloud.wait_for_result(job_id, timeout_sec=60)["status"] == "completed"
        wait_until(lambda: RAW_LINE in paths.daemon_log.read_text(), 10, "the executor's line in the log")
    finally:
        stopped = run_cli("stop", env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stderr

    # then every line parses as one JSON object with an ISO 8601 UTC time, gunicorn's and the
    # supervisor's own lines included, and the raw line is wrapped, naming its part
    lines = paths.daemon_log.read_text().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} of {len(lines)} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        _utc(entry["time"])
        entries.append(entry)
    raw = [e for e in entries if e["message"] == RAW_LINE]
    assert raw and raw[0]["part"] == ("node" if one_process else "jobs")
    if one_process:
        assert any("coda-bridge running in one process" in e["message"] for e in entries), entries
        return
    parts = {entry.get("part") for entry in entries}
    assert {"system", "bridge", "jobs", "control", "web"} <= parts, parts
    assert any(e["part"] == "system" and e["message"].startswith("all processes stopped") for e in entries)
    assert any(e["part"] == "web" and e.get("logger", "").startswith("gunicorn") for e in entries), parts
