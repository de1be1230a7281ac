"""VPN health: a tunnel interface is up and every probe target answers through it (PROTOCOL.md section 6).

A check passes when a tun interface is up (or the hinted interface only),
each probe target's host resolves and each target answers an HTTP ``HEAD``
within :data:`PROBE_TIMEOUT_SEC` with a status below 500, as in the first
runtime: a 4xx still proves the path through the tunnel, a 5xx from a
broken gateway does not.  A transport error, a TLS failure or a timeout
fails the probe.  Without configured targets, a required VPN probes
``{webapp_url}/api/internal/qpu/health`` (the first runtime's default).
Probes to ``webapp_url``'s own origin carry the operator's
``node_connect_headers``; probes elsewhere carry none.

The state is shared through :class:`~coda_bridge.state.node_state.NodeState` with
an expiry, so every process reads the last check and a dead checker reads
as ``booting`` rather than frozen in its last good state.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from ..cloud.http_client import connect_headers_for
from ..errors import VPNError
from ..settings import Settings
from ..state.node_state import NodeState
from .states import BOOTING, DEGRADED, READY, VPN_UNAVAILABLE

__all__ = [
    "HEALTH_PATH",
    "PROBE_TIMEOUT_SEC",
    "VpnCheck",
    "VpnGuard",
    "preflight",
    "state_ttl_sec",
    "tun_interfaces",
]

logger = logging.getLogger(__name__)


#: How long one probe target may take to answer its ``HEAD``.
PROBE_TIMEOUT_SEC = 5.0
#: The default probe target's path under ``webapp_url`` (it answers without auth).
HEALTH_PATH = "/api/internal/qpu/health"
#: The lowest HTTP status that fails a probe: the gateway or the cloud behind the tunnel is broken.
PROBE_FAILING_STATUS = 500
#: How long one ``ip`` command may run.
IP_TIMEOUT_SEC = 5.0
#: The stored state lives this many check intervals, so one late check does not read as a dead checker.
STATE_TTL_CHECKS = 3
#: ... and never less than this.
MIN_STATE_TTL_SEC = 10.0
#: Link kinds that carry an OpenVPN tunnel: tun, and the data-channel-offload devices OpenVPN 2.6+ may use.
TUNNEL_KINDS = ("tun", "ovpn-dco", "ovpn")
#: A name the kernel accepts for an interface (no slash, colon or blank; at most 15 bytes).
_IFNAME = re.compile(r"[^/:\s]{1,15}")
#: Flags of an ``ip -o link`` line: ``2: tun0: <POINTOPOINT,UP,LOWER_UP> mtu ...``.
_LINK_LINE = re.compile(r"^\d+:\s+(?P<name>[^:@\s]+)(?:@\S+)?:\s+<(?P<flags>[^>]*)>")
_IFF_UP = 0x1
_SYS_NET = Path("/sys/class/net")

Interfaces = Callable[[str | None], list[str]]


# -- interfaces --


def _up(flags: set[str]) -> bool:
    """Up and with carrier: a tun device nobody holds open, or one left down, is no tunnel."""
    return "UP" in flags and "LOWER_UP" in flags


def _ip_links(ip: str, selector: list[str]) -> list[str]:
    """Names of the up interfaces that ``ip -o link show <selector>`` lists."""
    try:
        result = subprocess.run(
            [ip, "-o", "link", "show", *selector],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_SEC,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise VPNError(f"`ip link show` did not answer within {IP_TIMEOUT_SEC:g} s") from None
    except OSError as exc:
        raise VPNError(f"`ip` could not be run: {exc.strerror}") from None
    if result.returncode != 0:
        return []  # `ip link show dev X` fails when X does not exist
    names = []
    for line in result.stdout.splitlines():
        match = _LINK_LINE.match(line)
        if match and _up(set(match["flags"].split(","))):
            names.append(match["name"])
    return names


def _sysfs_up(name: str) -> bool:
    """The same test as :func:`_up`, from ``/sys/class/net`` (for hosts without ``ip``)."""
    base = _SYS_NET / name
    try:
        flags = int((base / "flags").read_text().strip(), 16)
        carrier = (base / "carrier").read_text().strip()
    except (OSError, ValueError):
        return False
    return bool(flags & _IFF_UP) and carrier == "1"


def tun_interfaces(hint: str | None = None) -> list[str]:
    """The tunnel interfaces that are up; with ``hint``, that interface only (any kind) or nothing."""
    hint = hint or None
    if hint is not None and (not _IFNAME.fullmatch(hint) or hint in (".", "..")):
        return []
    ip = shutil.which("ip")
    if hint:
        return _ip_links(ip, ["dev", hint]) if ip else ([hint] if _sysfs_up(hint) else [])
    if ip:
        found: list[str] = []
        for kind in TUNNEL_KINDS:
            found.extend(name for name in _ip_links(ip, ["type", kind]) if name not in found)
        return found
    try:
        candidates = sorted(entry.name for entry in _SYS_NET.iterdir() if (entry / "tun_flags").exists())
    except OSError:
        return []
    return [name for name in candidates if _sysfs_up(name)]


# -- probes --


def _shown(url: str) -> str:
    """A URL fit for logs: no user info, query or fragment (they may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    netloc = f"[{host}]" if ":" in host else host
    try:
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        netloc = f"{netloc}:?"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _reason(exc: BaseException) -> str:
    """The operating system's words for a transport error (never the URL, which requests would echo)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        pending.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return type(exc).__name__


def _ca_bundle() -> str | bool:
    """The CA bundle requests would take from the environment (``trust_env`` is off), else the default."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def probe_failure(
    url: str, timeout_sec: float = PROBE_TIMEOUT_SEC, headers: dict[str, str] | None = None
) -> str | None:
    """Why ``url`` fails as a probe target (no such host, no answer in time, a 5xx), or ``None``.

    ``headers`` go with the ``HEAD``; the caller passes them only for the cloud's own origin.
    """
    parts = urlsplit(url)
    shown = _shown(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"probe target {shown} is not an http(s) URL"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"probe target {shown} has a bad port"
    try:
        socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"probe host {parts.hostname} does not resolve"
    started = time.monotonic()
    try:
        with requests.Session() as session:
            session.trust_env = False  # straight through the tunnel: no proxy or .netrc from the environment
            response = session.head(
                url,
                timeout=timeout_sec,
                verify=_ca_bundle(),
                allow_redirects=False,
                headers={**(headers or {}), "Connection": "close", "User-Agent": "coda-bridge-vpn-probe"},
            )
            response.close()
    except requests.Timeout:
        return f"probe {shown} did not answer within {timeout_sec:g} s"
    except requests.RequestException as exc:
        return f"probe {shown} did not answer ({_reason(exc)})"
    elapsed = time.monotonic() - started
    if elapsed > timeout_sec:
        return f"probe {shown} answered after {elapsed:.1f} s, over the {timeout_sec:g} s limit"
    if response.status_code >= PROBE_FAILING_STATUS:
        return f"probe {shown} answered {response.status_code}: the cloud or a gateway before it is failing"
    return None


# -- state --


def state_ttl_sec(settings: Settings) -> float:
    """How long a stored VPN state stays valid without a new check."""
    return max(STATE_TTL_CHECKS * settings.vpn_check_interval_sec, MIN_STATE_TTL_SEC)


@dataclass(frozen=True)
class VpnCheck:
    """The outcome of one check: one of :data:`VPN_STATES` and a one-line reason."""

    state: str
    detail: str

    @property
    def ready(self) -> bool:
        return self.state == READY


class VpnGuard:
    """Runs the checks and keeps the state, in this process and (when given) in the node's shared state."""

    def __init__(
        self,
        settings: Settings,
        node_state: NodeState | None = None,
        *,
        probe_timeout_sec: float = PROBE_TIMEOUT_SEC,
        ttl_sec: float | None = None,
        interfaces: Interfaces = tun_interfaces,
    ) -> None:
        self.settings = settings
        self.node_state = node_state
        self.probe_timeout_sec = probe_timeout_sec
        self.ttl_sec = ttl_sec if ttl_sec is not None else state_ttl_sec(settings)
        self.interfaces = interfaces
        self._state = BOOTING
        self._was_ready = False

    @property
    def state(self) -> str:
        """The state after this guard's last check (``booting`` before the first)."""
        return self._state

    def probe_targets(self) -> list[str]:
        """The configured probe targets, else the cloud's health URL when the VPN is required, else none."""
        if self.settings.vpn_probe_targets:
            return list(self.settings.vpn_probe_targets)
        if not self.settings.vpn_required:
            return []
        return [self.settings.url(HEALTH_PATH)]

    def run_checks(self) -> tuple[bool, str]:
        """Run the checks in order, stopping at the first failure: (passed, one-line detail)."""
        if not self.settings.vpn_required:
            return True, "VPN not required"
        hint = self.settings.vpn_interface_hint
        try:
            present = self.interfaces(hint)
        except VPNError as exc:
            return False, str(exc)
        if not present:
            return False, f"interface {hint} is missing or down" if hint else "no tun interface"
        targets = self.probe_targets()
        for url in targets:
            reason = probe_failure(url, self.probe_timeout_sec, connect_headers_for(self.settings, url))
            if reason is not None:
                return False, reason
        return True, f"tunnel up on {present[0]}; {len(targets)} probe target(s) answered"

    def check(self) -> VpnCheck:
        """Check once, store the state and log a change (WARNING into a failing state, INFO into ready)."""
        passed, detail = self.run_checks()
        failing = DEGRADED if self._was_ready else VPN_UNAVAILABLE
        state = READY if passed else failing
        previous = self._store(state, detail)
        if state == VPN_UNAVAILABLE and previous in (READY, DEGRADED):
            state = DEGRADED  # another process saw the tunnel ready: this is a loss, not a slow start
            self._store(state, detail)
        if state == READY or previous in (READY, DEGRADED):
            self._was_ready = True
        before = previous if previous is not None else self._state
        if before != state:
            level = logging.INFO if state == READY else logging.WARNING
            logger.log(level, "VPN state %s -> %s: %s", before, state, detail)
        self._state = state
        return VpnCheck(state, detail)

    def _store(self, state: str, detail: str) -> str | None:
        """Write the state with its expiry; return the stored state it replaced (``None`` if none)."""
        if self.node_state is None:
            return None
        try:
            return self.node_state.set_vpn_state(state, self.ttl_sec, detail)
        except redis.RedisError as exc:
            logger.warning("VPN state could not be stored in the local broker: %s", type(exc).__name__)
            return None


def preflight(
    settings: Settings, node_state: NodeState | None = None, *, guard: VpnGuard | None = None
) -> VpnCheck:
    """Check once at start; a failure stops the start unless ``allow_degraded_startup`` is set."""
    result = (guard or VpnGuard(settings, node_state)).check()
    if result.ready:
        return result
    if settings.allow_degraded_startup:
        logger.warning(
            "VPN preflight failed (%s); starting anyway because CODA_ALLOW_DEGRADED_STARTUP is true.",
            result.detail,
        )
        return result
    raise VPNError(
        f"VPN preflight failed: {result.detail}; fix the tunnel or set CODA_ALLOW_DEGRADED_STARTUP=true "
        "to start without it"
    )
