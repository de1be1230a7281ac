"""The OpenVPN manager, against a fake ``openvpn`` that daemonizes like the real one."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coda_bridge.errors import ConfigError, VPNError
from coda_bridge.identity.credentials import StatePaths, write_private
from coda_bridge.settings import Settings
from coda_bridge.vpn.openvpn import OpenVPNManager

PROFILE = "client\ndev tun\nremote vpn.example.test 1194\n<key>\nU0VDUkVUS0VZTUFURVJJQUw=\n</key>\n"
SECRET = "U0VDUkVUS0VZTUFURVJJQUw="


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class TunnelWhenDaemonRuns:
    """An interface lister that reports ``tun7`` while the daemon in the pidfile runs; records its pids."""

    def __init__(self, settings: Settings, alive: Callable[[int], bool], *, comes_up: bool = True) -> None:
        self.pidfile = StatePaths(settings.state_dir).openvpn_pid
        self.alive = alive
        self.comes_up = comes_up
        self.pids: set[int] = set()

    def __call__(self, hint: str | None) -> list[str]:
        pid = _pid(self.pidfile)
        if pid is None or not self.alive(pid):
            return []
        self.pids.add(pid)
        return ["tun7"] if self.comes_up else []


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(vpn_required=True)


def _manager(binary: str, interfaces: Any, **options: Any) -> OpenVPNManager:
    options.setdefault("start_timeout_sec", 5.0)
    options.setdefault("poll_interval_sec", 0.05)
    options.setdefault("stop_grace_sec", 2.0)
    return OpenVPNManager(binary, interfaces=interfaces, **options)


def test_bring_up_writes_the_checked_profile_0600_and_starts_the_daemon(
    settings: Settings, fake_openvpn: Callable[..., str], alive: Callable[[int], bool]
) -> None:
    interfaces = TunnelWhenDaemonRuns(settings, alive)
    manager = _manager(fake_openvpn(), interfaces)
    paths = StatePaths(settings.state_dir)
    try:
        assert manager.bring_up(settings, PROFILE) is True
        assert paths.vpn_profile.read_text() == PROFILE + "reneg-sec 0\n"
        assert stat.S_IMODE(paths.vpn_profile.stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.openvpn_log.stat().st_mode) == 0o600
        status = manager.status(settings)
        pid = _pid(paths.openvpn_pid)
        assert status["running"] is True
        assert status["pid"] == pid
        assert status["interface"] == "tun7"
        assert status["profile_path"] == str(paths.vpn_profile.absolute())
    finally:
        manager.stop(settings)
    assert pid is not None and not alive(pid)
    assert not paths.openvpn_pid.exists()
    assert manager.status(settings)["running"] is False


def test_an_unsafe_profile_is_refused_before_anything_is_written(settings: Settings) -> None:
    manager = _manager("/nonexistent/openvpn", lambda hint: [])
    with pytest.raises(VPNError, match="line 2: directive 'up'"):
        manager.bring_up(settings, "client\nup /bin/sh\n")
    assert not StatePaths(settings.state_dir).vpn_profile.exists()


def test_no_daemon_is_started_when_a_tunnel_is_already_up(settings: Settings) -> None:
    manager = _manager("/nonexistent/openvpn", lambda hint: ["tun0"])
    assert manager.bring_up(settings, PROFILE) is False
    paths = StatePaths(settings.state_dir)
    assert paths.vpn_profile.exists()
    assert not paths.openvpn_pid.exists()


def test_a_missing_binary_says_to_install_openvpn(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(VPNError, match=r"openvpn is not installed \(at .*nope\).*apt-get install openvpn"):
        _manager(str(tmp_path / "nope"), lambda hint: []).bring_up(settings, PROFILE)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VPNError, match=r"openvpn is not installed \(on PATH\)"):
        OpenVPNManager(interfaces=lambda hint: []).bring_up(settings, PROFILE)


def test_timeout_kills_the_daemon_and_reports_the_last_20_log_lines(
    settings: Settings,
    fake_openvpn: Callable[..., str],
    alive: Callable[[int], bool],
    caplog: pytest.LogCaptureFixture,
) -> None:
    interfaces = TunnelWhenDaemonRuns(settings, alive, comes_up=False)
    manager = _manager(fake_openvpn(log_lines=30), interfaces, start_timeout_sec=1.0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VPNError, match="did not come up within 1 s") as caught:
        manager.bring_up(settings, PROFILE)
    message = str(caught.value)
    assert [f"line {n:02d}" in message for n in range(1, 31)] == [False] * 10 + [True] * 20
    assert len(interfaces.pids) == 1
    (pid,) = interfaces.pids
    assert not alive(pid)
    assert not StatePaths(settings.state_dir).openvpn_pid.exists()
    assert SECRET not in message
    assert SECRET not in caplog.text


def test_a_daemon_that_exits_early_fails_without_waiting_for_the_timeout(
    settings: Settings, fake_openvpn: Callable[..., str], alive: Callable[[int], bool]
) -> None:
    interfaces = TunnelWhenDaemonRuns(settings, alive, comes_up=False)
    manager = _manager(fake_openvpn("die"), interfaces, start_timeout_sec=30.0)
    started = time.monotonic()
    with pytest.raises(VPNError, match=r"OpenVPN exited before a tun interface came up(.|\n)*line 30"):
        manager.bring_up(settings, PROFILE)
    assert time.monotonic() - started < 10


def test_a_failing_start_reports_its_output_and_log(
    settings: Settings, fake_openvpn: Callable[..., str], alive: Callable[[int], bool]
) -> None:
    manager = _manager(fake_openvpn("fail", log_lines=3), TunnelWhenDaemonRuns(settings, alive))
    with pytest.raises(
        VPNError, match=r"exited with status 1 at start(.|\n)*simulated bad option(.|\n)*line 03"
    ):
        manager.bring_up(settings, PROFILE)


def test_stop_does_not_signal_a_foreign_pid_from_the_pidfile(
    settings: Settings, alive: Callable[[int], bool], caplog: pytest.LogCaptureFixture
) -> None:
    paths = StatePaths(settings.state_dir)
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    foreign = subprocess.Popen(["sleep", "60"])
    try:
        write_private(paths.openvpn_pid, f"{foreign.pid}\n")
        caplog.set_level(logging.WARNING)
        OpenVPNManager().stop(settings)
        assert foreign.poll() is None
        assert not paths.openvpn_pid.exists()
        assert "not the OpenVPN daemon this node started" in caplog.text
    finally:
        foreign.kill()
        foreign.wait()


def test_stop_does_not_signal_an_openvpn_running_another_profile(
    settings: Settings,
    fake_openvpn: Callable[..., str],
    tmp_path: Path,
    alive: Callable[[int], bool],
    wait_until: Callable[..., Any],
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    args = ["--config", str(other / "x.ovpn"), "--daemon", "--writepid", str(other / "pid")]
    subprocess.run([sys.executable, fake_openvpn(), *args, "--log", str(other / "log")], check=True)
    pid = wait_until(lambda: _pid(other / "pid"))
    assert alive(pid)
    paths = StatePaths(settings.state_dir)
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_private(paths.openvpn_pid, f"{pid}\n")
        _manager(fake_openvpn(), lambda hint: []).stop(settings)
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_stop_is_quiet_when_nothing_runs(settings: Settings) -> None:
    manager = OpenVPNManager()
    manager.stop(settings)  # no state directory yet
    paths = StatePaths(settings.state_dir)
    paths.root.mkdir(mode=0o700, parents=True)
    write_private(paths.openvpn_pid, "not a pid\n")
    manager.stop(settings)
    assert not paths.openvpn_pid.exists()


def test_stop_kills_a_daemon_that_ignores_sigterm(
    settings: Settings,
    fake_openvpn: Callable[..., str],
    alive: Callable[[int], bool],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = _manager(fake_openvpn("stubborn"), TunnelWhenDaemonRuns(settings, alive), stop_grace_sec=0.3)
    assert manager.bring_up(settings, PROFILE) is True
    pid = _pid(StatePaths(settings.state_dir).openvpn_pid)
    caplog.set_level(logging.WARNING)
    manager.stop(settings)
    assert pid is not None and not alive(pid)
    assert "killing it" in caplog.text


def test_ensure_running_restarts_the_persisted_profile(
    make_settings: Callable[..., Settings], fake_openvpn: Callable[..., str], alive: Callable[[int], bool]
) -> None:
    settings = make_settings(vpn_required=True)
    interfaces = TunnelWhenDaemonRuns(settings, alive)
    manager = _manager(fake_openvpn(), interfaces)
    assert manager.ensure_running(settings) is False  # nothing persisted yet
    try:
        assert manager.bring_up(settings, PROFILE) is True
        assert manager.ensure_running(settings) is False  # the tunnel is up
        manager.stop(settings)
        assert manager.ensure_running(settings.replace(vpn_required=False)) is False
        assert manager.ensure_running(settings.replace(node_auto_vpn=False)) is False
        assert manager.ensure_running(settings) is True
        assert manager.status(settings)["running"] is True
    finally:
        manager.stop(settings)


def test_ensure_running_uses_node_vpn_profile_path(
    make_settings: Callable[..., Settings],
    fake_openvpn: Callable[..., str],
    alive: Callable[[int], bool],
    tmp_path: Path,
) -> None:
    profile = tmp_path / "site.ovpn"
    write_private(profile, PROFILE)
    settings = make_settings(vpn_required=True, node_vpn_profile_path=str(profile))
    manager = _manager(fake_openvpn(), TunnelWhenDaemonRuns(settings, alive))
    try:
        assert manager.ensure_running(settings) is True
        assert StatePaths(settings.state_dir).vpn_profile.read_text().endswith("reneg-sec 0\n")
        assert manager.status(settings)["profile_path"] == str(profile)
    finally:
        manager.stop(settings)


def test_restore_starts_the_saved_profile_and_refuses_a_required_vpn_without_one(
    make_settings: Callable[..., Settings], fake_openvpn: Callable[..., str], alive: Callable[[int], bool]
) -> None:
    # given a node whose VPN is required and that saved no profile
    settings = make_settings(vpn_required=True)
    manager = _manager(fake_openvpn(), TunnelWhenDaemonRuns(settings, alive))

    # when it restores the tunnel before a reconnect, then it is told to provision again
    with pytest.raises(ConfigError, match=r"no VPN profile was saved at .*coda\.ovpn: provision again"):
        manager.restore(settings)
    assert manager.restore(settings.replace(vpn_required=False)) is False  # nothing needed
    assert manager.restore(settings.replace(node_auto_vpn=False)) is False  # the site runs its own tunnel

    # and once a profile is saved and its daemon stopped, restore starts it again (and only once)
    try:
        assert manager.bring_up(settings, PROFILE) is True
        manager.stop(settings)
        assert manager.restore(settings) is True
        assert manager.status(settings)["running"] is True
        assert manager.restore(settings) is False  # the tunnel is up
    finally:
        manager.stop(settings)
