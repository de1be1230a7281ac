"""The node's VPN: the profile check, its own OpenVPN daemon, and the health guard.

Modules: :mod:`.states` (the states reported), :mod:`.profile` (what a
profile from the cloud may contain), :mod:`.openvpn` (the daemon),
:mod:`.guard` (tunnel and probe checks).
"""
