"""Start and stop the node's own OpenVPN client daemon (PROTOCOL.md sections 1.1 and 6).

The profile is checked against an allow-list and rewritten canonically
(:func:`check_profile`), written ``0600`` into the state directory and run
as ``openvpn --config <profile> --script-security 0 --daemon --writepid
<pidfile> --log <logfile>`` (:func:`daemon_command`).  OpenVPN applies its
options in command-line order, the file's at the place of ``--config``, and
the last ``script-security`` wins: so ``--script-security 0`` comes after
``--config``, where no line of the profile can raise it again.

Only a daemon this node started is ever signalled: its pid comes from our
pidfile and must still be an ``openvpn`` process running our profile, so a
reused pid or a tunnel someone else runs is left alone.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypedDict

from ..errors import ConfigError, VPNError
from ..identity.credentials import StatePaths, ensure_state_dir, read_private, write_private
from ..ops.proctree import alive
from ..settings import Settings
from .guard import tun_interfaces
from .profile import check_profile

__all__ = ["OpenVPNManager", "VpnStatus", "daemon_command"]

logger = logging.getLogger(__name__)

#: How long a started daemon may take to bring up its tun interface.
START_TIMEOUT_SEC = 30.0
#: How often the interface list is read while waiting for it.
POLL_INTERVAL_SEC = 1.0
#: How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
STOP_GRACE_SEC = 5.0
#: How long to wait for the process to vanish after SIGKILL.
KILL_WAIT_SEC = 2.0
#: How many lines of the OpenVPN log an error carries.
LOG_TAIL_LINES = 20
#: How often a stopping process is looked at.
_STOP_POLL_SEC = 0.05
#: The program name a daemon we started runs under (besides an explicit binary's own name).
_PROGRAM = "openvpn"
#: OpenVPN's script-security level for our daemon: it may run no external program at all.
SCRIPT_SECURITY_LEVEL = 0

Interfaces = Callable[[str | None], list[str]]


class VpnStatus(TypedDict):
    """What ``status`` and ``doctor`` show about the tunnel."""

    pid: int | None
    running: bool
    interface: str | None
    interfaces: list[str]
    profile_path: str | None
    log_path: str


def _absolute(settings: Settings) -> StatePaths:
    """State paths made absolute: the daemon changes to ``/``, and its command line must match ours."""
    return StatePaths(settings.state_dir.absolute())


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def daemon_command(binary: str, paths: StatePaths) -> list[str]:
    """The daemon's command line, ``--script-security 0`` after ``--config``: the profile cannot undo it."""
    return [
        binary,
        "--config", str(paths.vpn_profile),
        "--script-security", str(SCRIPT_SECURITY_LEVEL),
        "--daemon",
        "--writepid", str(paths.openvpn_pid),
        "--log", str(paths.openvpn_log),
    ]  # fmt: skip


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(log is empty)"


class OpenVPNManager:
    """The :class:`~coda_bridge.identity.connect.VpnControl` of a node that runs OpenVPN itself."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        start_timeout_sec: float = START_TIMEOUT_SEC,
        poll_interval_sec: float = POLL_INTERVAL_SEC,
        stop_grace_sec: float = STOP_GRACE_SEC,
        interfaces: Interfaces = tun_interfaces,
    ) -> None:
        self.binary = binary
        self.start_timeout_sec = start_timeout_sec
        self.poll_interval_sec = poll_interval_sec
        self.stop_grace_sec = stop_grace_sec
        self.interfaces = interfaces

    # -- starting --

    def resolve_binary(self) -> str:
        """The ``openvpn`` executable to run, or :class:`VPNError` saying how to get one."""
        found = self.binary if self.binary is not None else shutil.which(_PROGRAM)
        if not found or not Path(found).is_file() or not os.access(found, os.X_OK):
            where = f"at {self.binary}" if self.binary else "on PATH"
            raise VPNError(
                f"openvpn is not installed ({where}): install it, e.g. `apt-get install openvpn`, "
                "or set up the tunnel yourself and set CODA_NODE_AUTO_VPN=false"
            )
        return found

    def bring_up(self, settings: Settings, profile_text: str) -> bool:
        """Check and write the profile, start OpenVPN unless a tunnel is up; True when it started one."""
        checked = check_profile(profile_text)
        ensure_state_dir(settings.state_dir)
        paths = _absolute(settings)
        write_private(paths.vpn_profile, checked)
        present = self.interfaces(settings.vpn_interface_hint)
        if present:
            logger.info("A tunnel is already up (%s); not starting OpenVPN.", ", ".join(present))
            return False
        binary = self.resolve_binary()
        if self._our_pid(paths, binary) is not None:
            logger.warning("Stopping the earlier OpenVPN daemon of this node: it has no tunnel up.")
            self.stop(settings)
        self._start(binary, paths)
        self._wait_for_tunnel(settings, paths, binary)
        return True

    def _start(self, binary: str, paths: StatePaths) -> None:
        """Run the daemonizing ``openvpn`` and wait for its parent process to return."""
        with contextlib.suppress(FileNotFoundError):
            paths.openvpn_pid.unlink()
        write_private(paths.openvpn_log, "")  # OpenVPN truncates it; it keeps the 0600 mode
        args = daemon_command(binary, paths)
        logger.info("Starting OpenVPN with profile %s (log %s).", paths.vpn_profile, paths.openvpn_log)
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
                )
            except OSError as exc:
                raise VPNError(f"openvpn could not be run ({binary}): {exc.strerror}") from None
            try:
                status = process.wait(self.start_timeout_sec)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._kill_started(paths, binary)
                raise VPNError(
                    f"openvpn did not finish starting within {self.start_timeout_sec:g} s; "
                    f"last lines of {paths.openvpn_log}:\n{_tail(paths.openvpn_log)}"
                ) from None
            if status != 0:
                self._kill_started(paths, binary)
                raise VPNError(
                    f"openvpn exited with status {status} at start; "
                    f"last lines of its output and of {paths.openvpn_log}:\n"
                    f"{self._startup_text(output, paths)}"
                )

    @staticmethod
    def _startup_text(output: IO[bytes], paths: StatePaths) -> str:
        output.seek(0)
        early = [line for line in output.read().decode(errors="replace").splitlines() if line.strip()]
        log = _tail(paths.openvpn_log)
        return "\n".join([*early[-LOG_TAIL_LINES:], log]) if early else log

    def _wait_for_tunnel(self, settings: Settings, paths: StatePaths, binary: str) -> None:
        """Poll for the tun interface; kill the daemon and fail with its log when none comes up."""
        deadline = time.monotonic() + self.start_timeout_sec
        wanted = settings.vpn_interface_hint or "a tun interface"
        while True:
            present = self.interfaces(settings.vpn_interface_hint)
            if present:
                logger.info("OpenVPN tunnel is up on %s.", ", ".join(present))
                return
            pid = _read_pid(paths.openvpn_pid)
            if pid is not None and not alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    paths.openvpn_pid.unlink()
                raise VPNError(
                    f"OpenVPN exited before {wanted} came up; "
                    f"last lines of {paths.openvpn_log}:\n{_tail(paths.openvpn_log)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self.poll_interval_sec, remaining))
        self._kill_started(paths, binary)
        raise VPNError(
            f"OpenVPN started but {wanted} did not come up within {self.start_timeout_sec:g} s "
            f"(the daemon was stopped); last lines of {paths.openvpn_log}:\n{_tail(paths.openvpn_log)}"
        )

    # -- stopping --

    def _names(self, binary: str | None) -> set[str]:
        names = {_PROGRAM}
        for candidate in (binary, self.binary):
            if candidate:
                names.add(Path(candidate).name)
        return names

    def _is_ours(self, pid: int, paths: StatePaths, binary: str | None) -> bool:
        """Whether ``pid`` runs one of our program names with ``--config`` set to our profile."""
        args = _cmdline(pid)
        if not args:
            return False
        # argv[1] is the program when a script runs through its interpreter (``python3 /x/openvpn``).
        programs = {Path(arg).name for arg in args[:2]}
        if not programs & self._names(binary):
            return False
        profile = str(paths.vpn_profile)
        return any(a == "--config" and b == profile for a, b in itertools.pairwise(args))

    def _our_pid(self, paths: StatePaths, binary: str | None = None) -> int | None:
        """The pid of the daemon this node started, when it is still running; else ``None``."""
        pid = _read_pid(paths.openvpn_pid)
        if pid is None or not alive(pid) or not self._is_ours(pid, paths, binary):
            return None
        return pid

    def _kill_started(self, paths: StatePaths, binary: str) -> None:
        """Stop the daemon of a failed start, whatever its state; never fails itself."""
        try:
            self._stop_paths(paths, binary)
        except VPNError as exc:
            logger.error("%s", exc)

    def stop(self, settings: Settings) -> None:
        """Stop the OpenVPN daemon this node started (SIGTERM, then SIGKILL); quiet when none runs."""
        self._stop_paths(_absolute(settings), None)

    def _stop_paths(self, paths: StatePaths, binary: str | None) -> None:
        pidfile = paths.openvpn_pid
        pid = _read_pid(pidfile)
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
            return
        if not alive(pid):
            pidfile.unlink(missing_ok=True)
            return
        if not self._is_ours(pid, paths, binary):
            logger.warning(
                "Not stopping pid %d from %s: it is not the OpenVPN daemon this node started; "
                "removing the stale pidfile.",
                pid,
                pidfile,
            )
            pidfile.unlink(missing_ok=True)
            return
        logger.info("Stopping OpenVPN (pid %d).", pid)
        if self._signal_and_wait(pid, signal.SIGTERM, self.stop_grace_sec):
            pidfile.unlink(missing_ok=True)
            return
        logger.warning(
            "OpenVPN (pid %d) did not exit within %g s of SIGTERM; killing it.", pid, self.stop_grace_sec
        )
        if not self._signal_and_wait(pid, signal.SIGKILL, KILL_WAIT_SEC):
            raise VPNError(f"OpenVPN (pid {pid}) is still running after SIGKILL")
        pidfile.unlink(missing_ok=True)

    @staticmethod
    def _signal_and_wait(pid: int, signum: signal.Signals, wait_sec: float) -> bool:
        """Send ``signum`` and wait up to ``wait_sec`` for the process to go; True when it went."""
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_sec
        while alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_STOP_POLL_SEC)
        return True

    # -- restart and status --

    def profile_path(self, settings: Settings) -> Path:
        """The persisted profile: ``node_vpn_profile_path`` when set, else the state directory's."""
        if settings.node_vpn_profile_path:
            return Path(settings.node_vpn_profile_path)
        return _absolute(settings).vpn_profile

    def ensure_running(self, settings: Settings) -> bool:
        """After a restart, start the persisted profile again when no tunnel is up; True if started.

        A profile file that others can read, or a symlink, is refused with :class:`ConfigError`.
        """
        if not (settings.vpn_required and settings.node_auto_vpn):
            return False
        path = self.profile_path(settings)
        text = read_private(path)
        if text is None:
            logger.debug("No persisted VPN profile at %s; nothing to start.", path)
            return False
        if self.interfaces(settings.vpn_interface_hint):
            return False
        paths = _absolute(settings)
        if self._our_pid(paths) is not None:
            logger.info("OpenVPN of this node is running but its tunnel is not up yet; leaving it be.")
            return False
        logger.info("No tunnel is up; starting OpenVPN again from %s.", path)
        return self.bring_up(settings, text)

    def restore(self, settings: Settings) -> bool:
        """Before a reconnect, start the saved profile unless a tunnel is up; True if it started one.

        A required VPN without a saved profile is a :class:`ConfigError`: only a new token brings one.
        """
        if not (settings.vpn_required and settings.node_auto_vpn):
            return False
        path = self.profile_path(settings)
        if read_private(path) is None:
            raise ConfigError(
                f"the VPN is required but no VPN profile was saved at {path}: provision again with a new "
                "node token (coda-bridge reset, then coda-bridge start --token ...)"
            )
        return self.ensure_running(settings)

    def status(self, settings: Settings) -> VpnStatus:
        """Pid, liveness, interface and profile of the node's tunnel, for ``status`` and ``doctor``."""
        paths = _absolute(settings)
        pid = self._our_pid(paths)
        try:
            present = self.interfaces(settings.vpn_interface_hint)
        except VPNError:
            present = []
        profile = self.profile_path(settings)
        return VpnStatus(
            pid=pid,
            running=pid is not None,
            interface=present[0] if present else None,
            interfaces=present,
            profile_path=str(profile) if profile.exists() else None,
            log_path=str(paths.openvpn_log),
        )
