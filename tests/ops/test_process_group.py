"""The `start` process group with stand-in processes: drain order, a second signal, deferred starts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import wait_until
from coda_bridge.ops.proctree import alive, process_tree

#: Real processes (servers, supervisors): the end-to-end tier, not the fast one.
pytestmark = pytest.mark.e2e


CHILD = """
import signal, sys, time
name, mode, log = sys.argv[1:4]
def note(text):
    with open(log, "a") as handle:
        handle.write(f"{name} {text}\\n")
def term(signum, frame):
    note("TERM")
    if mode == "stubborn":
        return
    time.sleep(1.0 if mode == "drain" else 0.1)
    note("done")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
note("ready")
while True:
    time.sleep(0.05)
"""

DRIVER = """
import json, os, sys
from coda_bridge.ops.process_list import ProcessSpec
from coda_bridge.ops.group import ProcessGroup
config = json.load(open(sys.argv[1]))
flag = config.get("flag")
group = ProcessGroup(
    drain_timeout_sec=config["drain"],
    identity_ready=(lambda: os.path.exists(flag)) if flag else None,
)
for name, argv, deferred in config["procs"]:
    group.add(ProcessSpec(name, tuple(argv)), dict(os.environ), deferred=deferred)
group.loop()
sys.exit(group.returncode)
"""


def _group(tmp_path: Path, procs: dict[str, str], *, deferred: tuple[str, ...] = (), flag: Path | None = None,
           drain: float = 10) -> tuple[subprocess.Popen[str], Path]:  # fmt: skip
    (tmp_path / "child.py").write_text(textwrap.dedent(CHILD))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    log = tmp_path / "events.log"
    config = {
        "drain": drain,
        "flag": str(flag) if flag else None,
        "procs": [
            [name, [sys.executable, str(tmp_path / "child.py"), name, mode, str(log)], name in deferred]
            for name, mode in procs.items()
        ],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    group = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return group, log


def _events(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_executors_drain_before_delivery_and_control_are_stopped(tmp_path: Path) -> None:
    group, log = _group(
        tmp_path, {"bridge": "quick", "jobs": "drain", "results": "quick", "control": "quick"}
    )
    try:
        wait_until(lambda: sum("ready" in e for e in _events(log)) == 4, 20, "all four to start")
        tree = process_tree(group.pid)
        group.send_signal(signal.SIGTERM)
        out, _ = group.communicate(timeout=20)
    finally:
        group.kill()
    assert group.returncode == 0, out
    events = _events(log)
    assert events.index("jobs done") < events.index("results TERM")
    assert events.index("jobs done") < events.index("control TERM")
    assert events.count("jobs TERM") == 1
    assert "draining (up to 10 s)" in out
    assert "all processes stopped (rc=0)" in out
    wait_until(lambda: not any(alive(p) for p in tree), 5, "every process to be gone")


def test_a_second_signal_kills_everything_at_once(tmp_path: Path) -> None:
    group, log = _group(tmp_path, {"bridge": "quick", "jobs": "stubborn"}, drain=60)
    try:
        wait_until(lambda: sum("ready" in e for e in _events(log)) == 2, 20, "both to start")
        tree = process_tree(group.pid)
        group.send_signal(signal.SIGTERM)
        wait_until(lambda: "jobs TERM" in _events(log), 10, "the drain to begin")
        signalled = time.monotonic()
        group.send_signal(signal.SIGINT)  # a second Ctrl-C
        out, _ = group.communicate(timeout=10)
        took = time.monotonic() - signalled
    finally:
        group.kill()
    assert took < 3
    assert group.returncode == 1
    assert "second signal (SIGINT); killing every process now" in out
    wait_until(lambda: not any(alive(p) for p in tree), 5, "every process to be gone")


def test_deferred_processes_start_once_the_node_has_an_identity(tmp_path: Path) -> None:
    flag = tmp_path / "identity"
    group, log = _group(tmp_path, {"bridge": "quick", "jobs": "quick"}, deferred=("jobs",), flag=flag)
    try:
        wait_until(lambda: "bridge ready" in _events(log), 20, "the bridge to start")
        time.sleep(1.0)  # the group looks twice a second: jobs must still wait
        assert "jobs ready" not in _events(log)
        flag.write_text("x")
        wait_until(lambda: "jobs ready" in _events(log), 10, "jobs to start")
        group.send_signal(signal.SIGTERM)
        out, _ = group.communicate(timeout=20)
    finally:
        group.kill()
    assert group.returncode == 0, out
    assert "the node has an identity; starting jobs" in out
