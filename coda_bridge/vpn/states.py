"""The VPN states the node reports (``/ready``, metrics, the heartbeat's tunnel check)."""

from __future__ import annotations

__all__ = ["BOOTING", "DEGRADED", "READY", "VPN_STATES", "VPN_UNAVAILABLE"]

#: No check has finished yet.
BOOTING = "booting"
#: The tunnel is up and every probe target answers through it.
READY = "ready"
#: No tunnel interface is up.
VPN_UNAVAILABLE = "vpn_unavailable"
#: A tunnel is up but a probe target does not answer.
DEGRADED = "degraded"
VPN_STATES = (BOOTING, READY, VPN_UNAVAILABLE, DEGRADED)
