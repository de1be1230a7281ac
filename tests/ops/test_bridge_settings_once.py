"""A bridge process loads its settings once per start: the entry loads them and hands them down.

Each load warns about a misspelt ``CODA_`` variable, so the warning's count
is the number of loads: the Procfile's ``coda-bridge bridge`` and ``start``'s
bridge process each say it exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ops_support import node_env

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

#: A variable no setting is called (a typo of an operator's), so every load of the settings warns once.
MISSPELT = "CODA_BRIDGE_MISSPELT_SETTING"
WARNING = f"Ignoring unknown setting {MISSPELT}."
#: What the bridge logs once its loop reads the stream (connected, registered, running).
READING = "Bridge reading"
STOP_TIMEOUT_SEC = 30

LAUNCHERS = {
    "procfile": (str(Path(sys.executable).parent / "coda-bridge"), "bridge"),
    "start": (sys.executable, "-m", "coda_bridge.ops.runners", "bridge"),
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_bridge_start_loads_its_settings_once(
    cloud_stack: LocalStack, tmp_path: Path, launcher: str
) -> None:
    # Given a misspelt CODA_ variable in the bridge's environment
    log = tmp_path / "bridge.log"
    env = node_env(cloud_stack, **{MISSPELT: "1"})

    # When the bridge starts, provisions, connects and reads the stream, then stops
    with log.open("wb") as out:
        bridge = subprocess.Popen(LAUNCHERS[launcher], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: READING in log.read_text() or bridge.poll() is not None, 60, "the bridge to read")
        assert bridge.poll() is None, log.read_text()[-3000:]
        bridge.send_signal(signal.SIGTERM)
        returncode = bridge.wait(STOP_TIMEOUT_SEC)
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()

    # Then the settings were loaded once: one warning about the variable, and a clean stop
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert text.count(WARNING) == 1, text[-3000:]


def test_a_one_process_start_loads_its_settings_once(cloud_stack: LocalStack, tmp_path: Path) -> None:
    # Given a misspelt CODA_ variable in the environment of `start --one-process`
    log = tmp_path / "start.log"
    env = node_env(cloud_stack, **{MISSPELT: "1"})

    # When the node starts, provisions, connects and reads the stream, then stops
    argv = (sys.executable, "-m", "coda_bridge", "start", "--one-process")
    with log.open("wb") as out:
        node = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: READING in log.read_text() or node.poll() is not None, 60, "the node to read")
        assert node.poll() is None, log.read_text()[-3000:]
        node.send_signal(signal.SIGTERM)
        returncode = node.wait(STOP_TIMEOUT_SEC)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()

    # Then the command, its connect and its workers shared one load: one warning, and a clean stop
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert text.count(WARNING) == 1, text[-3000:]
