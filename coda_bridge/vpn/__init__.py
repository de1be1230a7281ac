"""The node's VPN: profile safety check, its own OpenVPN daemon, and the health guard."""

from __future__ import annotations

from .guard import (
    BOOTING,
    DEGRADED,
    READY,
    VPN_STATES,
    VPN_UNAVAILABLE,
    VpnCheck,
    VpnGuard,
    preflight,
    probe_failure,
    state_ttl_sec,
    tun_interfaces,
)
from .openvpn import OpenVPNManager, VpnStatus
from .profile import FORBIDDEN_DIRECTIVES, check_profile

__all__ = [
    "BOOTING",
    "DEGRADED",
    "FORBIDDEN_DIRECTIVES",
    "READY",
    "VPN_STATES",
    "VPN_UNAVAILABLE",
    "OpenVPNManager",
    "VpnCheck",
    "VpnGuard",
    "VpnStatus",
    "check_profile",
    "preflight",
    "probe_failure",
    "state_ttl_sec",
    "tun_interfaces",
]
