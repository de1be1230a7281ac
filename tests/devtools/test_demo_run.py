"""`coda-bridge demo` runs to completion with exit 0, within a minute, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import wait_until

DEMO_BUDGET_SEC = 60


def _processes_mentioning(text: str) -> list[int]:
    """Pids (other than ours) whose command line or environment mentions ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env["TMPDIR"] = str(tmp_path)  # everything the demo creates lives under here
    return subprocess.Popen(
        [sys.executable, "-m", "coda_bridge", "demo", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # like a shell job: Ctrl-C reaches the whole group
    )


@pytest.mark.e2e
def test_demo_runs_to_completion_and_stops_everything(tmp_path: Path) -> None:
    started = time.monotonic()
    demo = _demo(tmp_path)
    out, _ = demo.communicate(timeout=DEMO_BUDGET_SEC + 30)
    took = time.monotonic() - started
    assert demo.returncode == 0, out
    assert took < DEMO_BUDGET_SEC, f"the demo took {took:.1f} s"
    assert "All 9 outcomes as expected" in out
    for label in ("Bell pair", "GHZ, 3 qubits", "ry(0.5π)", "invalid (cnot on cz)", "cancelled mid-run"):
        assert label in out
    assert "WRONG" not in out
    assert "Gate 'cnot' not legal" in out
    assert "█" in out  # the histograms
    wait_until(lambda: not _processes_mentioning(str(tmp_path)), 10, "every demo process to be gone")


@pytest.mark.e2e
def test_demo_interrupted_mid_run_leaves_nothing_behind(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--workdir", str(tmp_path / "work"))
    assert demo.stdout is not None
    for line in demo.stdout:
        if "provisioned; processes:" in line:
            break
    assert len(_processes_mentioning(str(tmp_path))) >= 5  # Redis twice, the simulator, the node
    os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the terminal
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130, rest  # (once 1 in a full run: what the demo said is kept for that)
    wait_until(lambda: not _processes_mentioning(str(tmp_path)), 15, "every demo process to be gone")
