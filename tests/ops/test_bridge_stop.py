"""One bridge, one stop: the Procfile's ``coda-bridge bridge`` and ``start``'s bridge process stop alike.

A first SIGTERM ends the bridge after its current stream read (its loop
ends, the process exits 0), and a read that waits for new entries is ended
at once rather than waited out; a second SIGTERM ends the process at once.
"""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ops_support import circuit, node_env

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.exits import FORCED_EXIT

pytestmark = pytest.mark.e2e

#: A long blocking read, so a read waited out and a read ended at once are seconds apart.
STREAM_BLOCK_MS = 10_000
#: A stop well within the blocking read (on a busy machine too).
PROMPT_STOP_SEC = 5.0
#: What the bridge logs once its loop reads the stream, and once its loop ended.
READING = "Bridge reading"
LOOP_ENDED = "Bridge stopped after forwarding"
PACKAGE = Path(__file__).resolve().parents[2] / "coda_bridge"

LAUNCHERS = {
    "procfile": (str(Path(sys.executable).parent / "coda-bridge"), "bridge"),
    "start": (sys.executable, "-m", "coda_bridge.ops.runners", "bridge"),
}


def _bridge(stack: LocalStack, argv: tuple[str, ...], log: Path) -> subprocess.Popen[bytes]:
    env = node_env(stack, CODA_STREAM_BLOCK_MS=str(STREAM_BLOCK_MS))
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_until(
        lambda: READING in log.read_text() or process.poll() is not None, 60, "the bridge to read the stream"
    )
    assert process.poll() is None, log.read_text()[-3000:]
    return process


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_first_sigterm_ends_the_blocked_read_stops_the_loop_and_exits_0(
    cloud_stack: LocalStack, tmp_path: Path, launcher: str
) -> None:
    # Given a bridge blocked in a long stream read
    log = tmp_path / "bridge.log"
    bridge = _bridge(cloud_stack, LAUNCHERS[launcher], log)
    try:
        # When it gets one SIGTERM
        signalled = time.monotonic()
        bridge.send_signal(signal.SIGTERM)
        returncode = bridge.wait(STREAM_BLOCK_MS / 1000 + 30)
        took = time.monotonic() - signalled
    finally:
        _kill(bridge)

    # Then the read ended at once, its loop ended (not abandoned mid-read) and it exits 0
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert LOOP_ENDED in text, text[-3000:]
    assert took < PROMPT_STOP_SEC, f"took {took:.1f} s"


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_second_sigterm_ends_the_bridge_at_once(
    cloud_stack: LocalStack, tmp_path: Path, launcher: str
) -> None:
    # Given a bridge blocked in a long stream read that cannot be ended (its Redis hangs), asked to stop once
    log = tmp_path / "bridge.log"
    bridge = _bridge(cloud_stack, LAUNCHERS[launcher], log)
    cloud_redis = cloud_stack.cloud_redis.process
    assert cloud_redis is not None
    cloud_redis.send_signal(signal.SIGSTOP)
    try:
        bridge.send_signal(signal.SIGTERM)
        wait_until(
            lambda: "stopping" in log.read_text() or bridge.poll() is not None, 10, "the stop to begin"
        )

        # When a second SIGTERM comes while the read still blocks
        signalled = time.monotonic()
        bridge.send_signal(signal.SIGTERM)
        returncode = bridge.wait(STREAM_BLOCK_MS / 1000 + 30)
        took = time.monotonic() - signalled
    finally:
        cloud_redis.send_signal(signal.SIGCONT)
        _kill(bridge)

    # Then the process ends at once, saying it was forced
    text = log.read_text()
    assert returncode == FORCED_EXIT, text[-3000:]
    assert took < PROMPT_STOP_SEC, f"took {took:.1f} s"
    assert LOOP_ENDED not in text


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_sighup_never_stops_the_bridge(cloud_stack: LocalStack, tmp_path: Path, launcher: str) -> None:
    # Given a bridge reading the stream, its output not a terminal (honcho, systemd, `start`)
    log = tmp_path / "bridge.log"
    bridge = _bridge(cloud_stack, LAUNCHERS[launcher], log)
    try:
        # When it gets a SIGHUP (logrotate's postrotate, or a reload)
        bridge.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP received" in log.read_text() or bridge.poll() is not None, 10, "a line")
        # Then it says it goes on, and it does: a job sent after it is forwarded
        cloud_stack.cloud.submit(cloud_stack.qpu_id, circuit(), 10)
        cloud = cloud_stack.cloud_redis.client()
        qpu = cloud_stack.qpu_id
        wait_until(
            lambda: cloud.xpending(stream_key(qpu), group_name(qpu))["pending"] or bridge.poll() is not None,
            30,
            "the job read by the bridge",
        )
        running = bridge.poll() is None
    finally:
        _kill(bridge)
    text = log.read_text()
    assert running, text[-3000:]
    assert "SIGHUP received: no log file of this process to reopen; going on" in text
    assert "stopping" not in text and LOOP_ENDED not in text


def _constructed(name: str) -> list[str]:
    """The modules of the package that call ``name(...)``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name:
                found.append(str(path.relative_to(PACKAGE)))
                break
    return found


def test_the_stream_bridge_and_its_ticker_are_built_in_one_place() -> None:
    # Given the package's source; when we look for what builds the bridge's parts
    # Then only the one bridge (pipeline/bridge.py's BridgeProcess) builds them, for every launcher
    assert _constructed("StreamBridge") == ["pipeline/bridge.py"]
    assert _constructed("Ticker") == ["pipeline/bridge.py"]
    assert _constructed("CycleNotifier") == ["pipeline/bridge.py"]
