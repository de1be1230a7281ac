"""`status` sees every process of a node however it was started: here, honcho on the Procfile (issue 16)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ops_support import node_env, run_cli

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.proctree import alive, kill_tree, process_tree

pytestmark = pytest.mark.e2e

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
ROLES = ("bridge", "jobs", "results", "control")


def _listed(env: dict[str, str]) -> subprocess.CompletedProcess[str] | None:
    done = run_cli("status", env=env)
    found = all(re.search(rf"^(processes:)?\s+{role}\s+pid \d+ on ", done.stdout, re.M) for role in ROLES)
    return done if found else None


def test_status_lists_the_processes_of_a_node_started_with_honcho(
    cloud_stack: LocalStack, tmp_path: Path
) -> None:
    # given a node started by honcho on the Procfile (no `coda-bridge start`, so no pid file)
    procfile = tmp_path / "Procfile"
    procfile.write_text(PROCFILE.read_text())
    env = node_env(cloud_stack)
    with (tmp_path / "honcho.out").open("wb") as out:
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(procfile), "--no-colour", *ROLES],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        # when `status` asks, then it lists each process by role, and says the node runs (exit 0)
        done = wait_until(lambda: _listed(env), 60, "status to list every process")
        assert done.returncode == 0, done.stdout
        assert "coda-bridge: running (" in done.stdout
        assert "not started by `coda-bridge start`" in done.stdout
        tree = process_tree(honcho.pid)
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(60)
    finally:
        if honcho.poll() is None:
            kill_tree(process_tree(honcho.pid))
            honcho.wait()
    wait_until(lambda: not any(alive(p) for p in tree), 15, "every process honcho ran to be gone")
    # and once they are gone, `status` says stopped (exit 3)
    stopped = wait_until(
        lambda: (d := run_cli("status", env=env)).returncode == 3 and d, 30, "status: stopped"
    )
    assert "coda-bridge: stopped" in stopped.stdout
