"""``--script-security 0`` follows ``--config`` on the daemon's command line, so no profile line can raise it.

OpenVPN applies options in command-line order, the profile's at the place of
``--config``, and the last ``script-security`` wins.  The last test shows it
with the real ``openvpn`` (skipped when it is not installed): a profile that
sets ``script-security 2`` and an ``up`` script gets its script run when the
flag comes first, and not when it comes after ``--config`` as ours does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from coda_bridge.identity.credentials import StatePaths
from coda_bridge.ops.proctree import alive
from coda_bridge.settings import Settings
from coda_bridge.vpn.openvpn import OpenVPNManager, daemon_command

PROFILE = "client\ndev tun\nremote vpn.example.test 1194\n<key>\nU0VDUkVUS0VZTUFURVJJQUw=\n</key>\n"
#: How long the real openvpn may take to run (or refuse) its up script.
UP_SCRIPT_WAIT_SEC = 10.0


def _after_config(args: list[str]) -> str | None:
    """The script-security level given after ``--config``, or None when there is none there."""
    config = args.index("--config")
    levels = [args[i + 1] for i in range(config + 1, len(args) - 1) if args[i] == "--script-security"]
    return levels[-1] if levels else None


def test_the_daemon_command_gives_script_security_0_after_config(tmp_path: Path) -> None:
    # given the state paths of a node
    paths = StatePaths(tmp_path)
    # when its daemon command line is built
    args = daemon_command("/usr/sbin/openvpn", paths)
    # then --script-security 0 is the last script-security, and it follows --config <profile>
    assert args[:5] == ["/usr/sbin/openvpn", "--config", str(paths.vpn_profile), "--script-security", "0"]
    assert args.count("--script-security") == 1
    assert _after_config(args) == "0"


def test_the_started_daemon_runs_with_script_security_0_after_config(
    make_settings: Callable[..., Settings], fake_openvpn: Callable[..., str]
) -> None:
    # given a manager running the fake openvpn, and a tunnel that comes up while it runs
    settings = make_settings(vpn_required=True)
    paths = StatePaths(settings.state_dir)

    def interfaces(hint: str | None) -> list[str]:
        with contextlib.suppress(OSError, ValueError):
            return ["tun7"] if alive(int(paths.openvpn_pid.read_text())) else []
        return []

    manager = OpenVPNManager(
        fake_openvpn(), interfaces=interfaces, start_timeout_sec=5.0, poll_interval_sec=0.05
    )
    try:
        # when it brings the tunnel up
        assert manager.bring_up(settings, PROFILE) is True
        pid = int(paths.openvpn_pid.read_text())
        args = [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
    finally:
        manager.stop(settings)
    # then the running daemon was given --script-security 0 after --config
    assert _after_config(args) == "0"
    assert args[args.index("--config") + 1] == str(paths.vpn_profile.absolute())


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _openvpn() -> str | None:
    return shutil.which("openvpn") or next(
        (path for path in ("/usr/sbin/openvpn", "/sbin/openvpn") if os.access(path, os.X_OK)), None
    )


def _log(paths: StatePaths) -> str:
    try:
        return paths.openvpn_log.read_text(errors="replace")
    except OSError:
        return ""


def _stop_started(paths: StatePaths) -> None:
    """SIGTERM the daemon this test started, found by its own pidfile, and wait for it to go."""
    deadline = time.monotonic() + UP_SCRIPT_WAIT_SEC
    pid = None
    while pid is None and time.monotonic() < deadline and "Exiting due to fatal error" not in _log(paths):
        with contextlib.suppress(OSError, ValueError):
            pid = int(paths.openvpn_pid.read_text())
        time.sleep(0.05)
    if pid is None or not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _start_and_watch(args: list[str], paths: StatePaths, marker: Path) -> str:
    """Start a daemon with ``args``: 'ran' once its up script ran, 'refused' once openvpn refused it."""
    subprocess.run(args, check=True, timeout=UP_SCRIPT_WAIT_SEC, capture_output=True)
    deadline = time.monotonic() + UP_SCRIPT_WAIT_SEC
    try:
        while time.monotonic() < deadline:
            if marker.exists():
                return "ran"
            if "disallowed by script-security setting" in _log(paths):
                return "refused"
            time.sleep(0.05)
        return "neither ran nor refused its up script"
    finally:
        _stop_started(paths)


@pytest.mark.skipif(_openvpn() is None, reason="openvpn is not installed (apt-get install openvpn)")
def test_real_openvpn_runs_no_up_script_of_the_profile_when_script_security_0_follows_config(
    tmp_path: Path,
) -> None:
    # given a raw profile (not checked) that raises script-security and names an up script
    binary = _openvpn()
    assert binary is not None
    marker = tmp_path / "up-ran"
    script = tmp_path / "up.sh"
    script.write_text(f"#!/bin/sh\necho ran > {marker}\n")
    script.chmod(0o755)
    results = {}
    for order in ("flag before --config", "our daemon command"):
        paths = StatePaths(tmp_path / order.replace(" ", "-"))
        paths.root.mkdir()
        paths.vpn_profile.write_text(
            f"dev null\nlocal 127.0.0.1\nlport {_free_udp_port()}\nscript-security 2\nup {script}\nverb 3\n"
        )
        args = daemon_command(binary, paths)
        if order == "flag before --config":
            args.remove("--script-security")
            args.remove("0")
            args[1:1] = ["--script-security", "0"]
        # when openvpn is started with the flag in that place
        results[order] = _start_and_watch(args, paths, marker)
        marker.unlink(missing_ok=True)
    # then the profile's script-security wins over an earlier flag, but not over ours
    assert results == {"flag before --config": "ran", "our daemon command": "refused"}
