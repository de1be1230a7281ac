"""The Procfile's processes load dynaconf without Flask, as ``start``'s parts do (less CPU and memory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUBPROCESS_TIMEOUT_SEC = 60


def _imported(args: list[str], env: dict[str, str]) -> set[str]:
    """The modules a fresh interpreter imported running ``args`` (``-X importtime``'s report)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SEC,
        check=False,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    names = {line.rsplit("|", 1)[-1].strip() for line in lines}
    assert "dynaconf" in names, done.stderr[-2000:]
    return names


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env["CODA_SETTINGS_FILES"] = str(tmp_path / "settings.toml")
    env["CODA_STATE_DIR"] = str(tmp_path / "state")
    return env


def test_a_dramatiq_worker_process_of_the_procfile_loads_no_flask(tmp_path: Path) -> None:
    # Given what the `dramatiq actors` line's worker processes import first: the actors package
    # When a fresh interpreter imports it
    names = _imported(["-c", "import actors"], _env(tmp_path))
    # Then dynaconf is loaded, and neither Flask nor its werkzeug
    assert not {"flask", "werkzeug"} & names


def test_the_bridge_command_loads_no_flask(tmp_path: Path) -> None:
    # Given the Procfile's `coda-bridge bridge` line, whose settings cannot work (it loads them, then exits)
    env = _env(tmp_path)
    env["CODA_BROKER_URL"] = "not-a-redis-url"
    # When it runs
    names = _imported(["-m", "coda_bridge", "bridge"], env)
    # Then it loaded dynaconf without Flask
    assert not {"flask", "werkzeug"} & names
