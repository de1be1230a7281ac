"""The respawn wrapper: restarts with backoff, one SIGTERM per stop, no restart on EX_CONFIG, hard kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coda_bridge.dev.stack import wait_until
from coda_bridge.ops.proctree import alive, process_tree
from coda_bridge.ops.respawn import EX_CONFIG, FORCED_EXIT, respawn_argv

#: Real processes (servers, supervisors): the end-to-end tier, not the fast one.
pytestmark = pytest.mark.e2e


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _wrapper(name: str, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        respawn_argv(name, argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, as under honcho
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_child_that_dies_is_restarted_with_growing_backoff_and_the_log_says_so(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # the first two runs crash; the third stays up, so the stop below never races a crash
    argv = _script(
        tmp_path,
        f"import sys, time\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"if len(open({str(runs)!r}).read().split()) < 3:\n    sys.exit(3)\n"
        f"time.sleep(60)\n",
    )
    wrapper = _wrapper("flaky", argv)
    try:
        wait_until(lambda: len(_lines(runs)) >= 3, 15, "three runs of the child")
        wrapper.send_signal(signal.SIGTERM)
        out, _ = wrapper.communicate(timeout=10)
    finally:
        wrapper.kill()
    assert wrapper.returncode == 0
    assert "flaky" in out
    assert "exited with code 3" in out
    assert "restarting in 1 s (restart 1)" in out
    assert "restarting in 2 s (restart 2)" in out


def test_a_group_sigterm_reaches_the_child_exactly_once(tmp_path: Path) -> None:
    seen = tmp_path / "signals"
    argv = _script(
        tmp_path,
        f"""
        import signal, sys, time
        log = {str(seen)!r}
        def term(signum, frame):
            open(log, "a").write("TERM\\n")
        signal.signal(signal.SIGTERM, term)
        open(log, "a").write("ready\\n")
        while "TERM" not in open(log).read():
            time.sleep(0.05)
        time.sleep(0.5)  # a second SIGTERM would be recorded now
        sys.exit(0)
        """,
    )
    wrapper = _wrapper("drainer", argv)
    try:
        wait_until(lambda: "ready" in _lines(seen), 10, "the child to start")
        os.killpg(wrapper.pid, signal.SIGTERM)  # what honcho and systemd do
        wrapper.communicate(timeout=10)
    finally:
        wrapper.kill()
    assert wrapper.returncode == 0
    assert _lines(seen).count("TERM") == 1


def test_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = _script(tmp_path, f"import sys\nopen({str(runs)!r}, 'a').write('run\\n')\nsys.exit({EX_CONFIG})\n")
    wrapper = _wrapper("bridge", argv)
    out, _ = wrapper.communicate(timeout=10)
    assert wrapper.returncode == EX_CONFIG
    assert "not restarting" in out
    assert _lines(runs) == ["run"]


def test_a_second_signal_kills_the_child_and_its_children_at_once(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    argv = _script(
        tmp_path,
        f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, lambda *a: None)  # a child that will not stop
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{grandchild.pid}}\\n")
        time.sleep(60)
        """,
    )
    wrapper = _wrapper("stuck", argv)
    try:
        wait_until(lambda: _lines(pids), 10, "the child to start its own child")
        child, grandchild = (int(p) for p in _lines(pids)[0].split())
        assert set(process_tree(wrapper.pid)) >= {wrapper.pid, child, grandchild}
        wrapper.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the child ignores the first one; give it a moment to prove it
        assert alive(child)
        started = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        wrapper.communicate(timeout=10)
        assert time.monotonic() - started < 3
    finally:
        wrapper.kill()
    assert wrapper.returncode == FORCED_EXIT
    wait_until(lambda: not alive(child) and not alive(grandchild), 5, "child and grandchild to be gone")
