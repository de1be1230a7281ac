"""coda-node 0.1.1's command lines work as typed: `coda start -t TOKEN`, `-H HOST`, `-p PORT`, `coda --reset`.

Each start runs the whole node under `coda`, the name coda-node installed,
against the local cloud simulator; README: "Migrating from coda-node 0.1.1".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from ops_support import DRAIN_TIMEOUT_SEC, node_env

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.identity.credentials import StatePaths, ensure_state_dir, write_private
from coda_bridge.ops.proctree import process_tree

pytestmark = pytest.mark.e2e

#: How long a node may take to provision and serve its probes, in seconds.
UP_SEC = 60.0
CODA = str(Path(sys.executable).parent / "coda")


def _health(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    """Run `coda <args>` with an environment; stop it (SIGTERM, drained) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        output = (tmp_path / "start.out").open("wb")
        node = subprocess.Popen([CODA, *args], env=env, stdout=output, stderr=subprocess.STDOUT)
        output.close()
        started.append(node)
        return node

    yield run
    for node in started:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(DRAIN_TIMEOUT_SEC + 10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


def _serving(node: subprocess.Popen[bytes], url: str, tmp_path: Path) -> None:
    wait_until(lambda: _health(url) or node.poll() is not None, UP_SEC, f"the probes app at {url}")
    assert node.poll() is None, (tmp_path / "start.out").read_text(errors="replace")[-3000:]


def test_coda_start_dash_t_provisions_with_the_token_and_no_process_shows_it(
    cloud_stack: LocalStack, tmp_path: Path, start: object
) -> None:
    # given a fresh token typed as coda-node's `coda start -t TOKEN`
    env = node_env(cloud_stack)
    token = env.pop("CODA_NODE_TOKEN")

    # when the node starts with it
    node = start(["start", "-t", token], env)  # type: ignore[operator]
    _serving(node, f"http://127.0.0.1:{cloud_stack.web_port}/health", tmp_path)
    wait_until((cloud_stack.state_dir / "coda.config").exists, UP_SEC, "the node to provision")

    # then it provisioned with that token, and no process of the node has it in its command line
    assert [c["accepted"] for c in cloud_stack.cloud.connects(cloud_stack.qpu_id, mode="provision")] == [True]
    tree = process_tree(node.pid)
    leaks = [pid for pid in tree if token in " ".join(psutil.Process(pid).cmdline())]
    assert leaks == []


def test_coda_start_dash_capital_h_binds_the_probes_to_that_host(
    cloud_stack: LocalStack, tmp_path: Path, start: object
) -> None:
    # given coda-node's `coda start -H HOST`, another loopback address than the environment's CODA_HOST
    env = node_env(cloud_stack)
    port = cloud_stack.web_port

    # when the node starts
    node = start(["start", "-H", "127.0.0.2"], env)  # type: ignore[operator]
    _serving(node, f"http://127.0.0.2:{port}/health", tmp_path)

    # then its probes answer there, not on CODA_HOST (127.0.0.1)
    assert not _health(f"http://127.0.0.1:{port}/health")


def test_coda_start_dash_p_serves_the_probes_on_that_port(
    cloud_stack: LocalStack, tmp_path: Path, start: object
) -> None:
    # given coda-node's `coda start -p PORT`, another port than the environment's CODA_PORT
    env = node_env(cloud_stack)
    port = free_port()

    # when the node starts
    node = start(["start", "-p", str(port)], env)  # type: ignore[operator]
    _serving(node, f"http://127.0.0.1:{port}/health", tmp_path)

    # then its probes answer on that port, not on CODA_PORT
    assert not _health(f"http://127.0.0.1:{cloud_stack.web_port}/health")


def test_coda_reset_forgets_the_node_without_asking(tmp_path: Path) -> None:
    # given a node's persisted files, and coda-node 0.1.1's own files in the temporary directory
    state = tmp_path / "state"
    paths = ensure_state_dir(state)
    for path in (paths.config, paths.private_key, paths.vpn_profile):
        write_private(path, "x\n")
    legacy = tmp_path / "tmp"
    legacy.mkdir()
    for name in ("coda.config", "coda-private-key", "coda-node.ovpn"):
        write_private(legacy / name, "first runtime\n")
    keep = tmp_path / "elsewhere.txt"
    keep.write_text("not the node's\n")
    (legacy / "coda-node.ovpn").unlink()
    (legacy / "coda-node.ovpn").symlink_to(keep)  # planted: a link is never followed nor removed
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(CODA_STATE_DIR=str(state), CODA_SETTINGS_FILES=str(tmp_path / "none.toml"), TMPDIR=str(legacy))

    # when `coda --reset` runs with no terminal to answer a question
    done = subprocess.run(
        [CODA, "--reset"],
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then it did not ask, and every persisted file and the first runtime's credentials are gone
    assert done.returncode == 0, done.stderr
    assert "5 file(s) removed" in done.stdout
    assert not any(path.exists() for path in StatePaths(state).all_files())
    assert not (legacy / "coda.config").exists() and not (legacy / "coda-private-key").exists()
    assert (legacy / "coda-node.ovpn").is_symlink() and keep.read_text() == "not the node's\n"


def test_coda_reset_with_a_command_does_nothing_and_says_why(tmp_path: Path) -> None:
    # given a node's persisted credentials
    state = tmp_path / "state"
    paths = ensure_state_dir(state)
    write_private(paths.config, "x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(CODA_STATE_DIR=str(state), CODA_SETTINGS_FILES=str(tmp_path / "none.toml"))

    # when --reset comes with a command (coda-node 0.1.1 reset, then silently ignored the command)
    done = subprocess.run(
        [CODA, "--reset", "start"], check=False, env=env, capture_output=True, text=True, timeout=60
    )

    # then nothing was done, and one line says what to type instead
    assert done.returncode == 2
    assert "--reset takes no command; nothing was done" in done.stderr
    assert paths.config.exists()
