"""The supervisor of `start` with stand-in processes: restarts with backoff, exit 78, one SIGTERM each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import wait_until
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.ops.process_list import start_processes
from coda_bridge.settings import load_settings

#: Real processes (servers, supervisors): the end-to-end tier, not the fast one.
pytestmark = pytest.mark.e2e


DRIVER = """
import json, os, sys
from coda_bridge.ops.process_list import ProcessSpec
from coda_bridge.ops.group import ProcessGroup
config = json.load(open(sys.argv[1]))
group = ProcessGroup(drain_timeout_sec=10)
for name, argv in config["procs"]:
    group.add(ProcessSpec(name, tuple(argv)), dict(os.environ))
group.loop()
sys.exit(group.returncode)
"""


def _group(tmp_path: Path, children: dict[str, str]) -> subprocess.Popen[str]:
    """A group whose processes run the given scripts; its own session, as a terminal's job would be."""
    procs = []
    for name, body in children.items():
        script = tmp_path / f"{name}.py"
        script.write_text(textwrap.dedent(body))
        procs.append([name, [sys.executable, str(script)]])
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "config.json").write_text(json.dumps({"procs": procs}))
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_process_that_dies_is_restarted_with_growing_backoff_and_the_log_says_so(tmp_path: Path) -> None:
    # Given a process that crashes on its first two runs and then stays up
    runs = tmp_path / "runs"
    group = _group(
        tmp_path,
        {
            "flaky": f"""
            import sys, time
            open({str(runs)!r}, "a").write("run\\n")
            print("flaky line", flush=True)
            if len(open({str(runs)!r}).read().split()) < 3:
                sys.exit(3)
            time.sleep(60)
            """
        },
    )
    try:
        # When it has run three times and the group is stopped
        wait_until(lambda: len(_lines(runs)) >= 3, 15, "three runs")
        group.send_signal(signal.SIGTERM)
        out, _ = group.communicate(timeout=15)
    finally:
        group.kill()

    # Then each restart was logged with its backoff, its output kept its prefix, and the stop was clean
    assert group.returncode == 0, out
    assert "exited with code 3" in out
    assert "restarting in 1 s (restart 1)" in out
    assert "restarting in 2 s (restart 2)" in out
    assert "flaky  | flaky line" in out or "flaky | flaky line" in out
    assert "flaky started (pid=" in out


def test_exit_78_is_not_restarted_and_stops_the_group_with_78(tmp_path: Path) -> None:
    # Given a process that cannot work as configured, next to one that runs
    runs = tmp_path / "runs"
    group = _group(
        tmp_path,
        {
            "bridge": f"import sys\nopen({str(runs)!r}, 'a').write('run\\n')\nsys.exit({EX_CONFIG})\n",
            "control": "import time\ntime.sleep(60)\n",
        },
    )
    try:
        # When the group runs
        out, _ = group.communicate(timeout=20)
    finally:
        group.kill()

    # Then it ran once, the group stopped everything, and the status is 78
    assert group.returncode == EX_CONFIG, out
    assert "not restarting it" in out
    assert _lines(runs) == ["run"]
    assert "control stopped" in out


def test_a_sigterm_to_the_whole_group_reaches_each_process_exactly_once(tmp_path: Path) -> None:
    # Given a process that records every SIGTERM and takes a moment to stop
    seen = tmp_path / "signals"
    group = _group(
        tmp_path,
        {
            "jobs": f"""
            import signal, sys, time
            log = {str(seen)!r}
            signal.signal(signal.SIGTERM, lambda *a: open(log, "a").write("TERM\\n"))
            open(log, "a").write("ready\\n")
            while "TERM" not in open(log).read():
                time.sleep(0.05)
            time.sleep(0.5)  # a second SIGTERM would be recorded now
            sys.exit(0)
            """
        },
    )
    try:
        wait_until(lambda: "ready" in _lines(seen), 10, "the process to start")

        # When its whole process group gets SIGTERM (what systemd's default KillMode does)
        os.killpg(group.pid, signal.SIGTERM)
        out, _ = group.communicate(timeout=15)
    finally:
        group.kill()

    # Then the process got exactly one, from the supervisor, and the group exits 0
    assert group.returncode == 0, out
    assert _lines(seen).count("TERM") == 1


def test_start_runs_one_process_per_part_and_no_secret_in_any_command_line() -> None:
    # Given the settings of a node
    settings = load_settings(overrides={"shutdown_drain_timeout_sec": 12})

    # When start plans its processes for a start at a given time
    specs = {spec.name: spec.argv for spec in start_processes(settings, since=1234.5)}

    # Then each part is one process (deliveries two: each has a GIL of its own), the workers name
    # their queue as dramatiq's command does, they wait for this start's connect, and no command
    # line carries a token or key
    assert list(specs) == ["bridge", "jobs", "results.1", "results.2", "control", "web"]
    for name in ("jobs", "results.1", "results.2", "control"):
        argv = specs[name]
        assert argv[argv.index("--queues") + 1] == name.split(".")[0]
        assert argv[argv.index("--connected-since") + 1] == "1234.500000"
        assert argv[argv.index("--drain-ms") + 1] == "12000"
    assert specs["results.1"] == specs["results.2"]
    assert "create_app_after_connect(1234.5)" in specs["web"][-1]
    assert not any("TOKEN" in arg or "KEY" in arg for argv in specs.values() for arg in argv)
