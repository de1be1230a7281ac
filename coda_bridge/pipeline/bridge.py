"""The bridge process from start to stop: connect, VPN, ticker, stream bridge, drain.

``coda-bridge bridge`` runs :func:`run_bridge`; ``coda-bridge start`` runs
it beside the workers and the web app.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import redis

from ..broker.queues import HEARTBEAT_ACTOR, VPN_CHECK_ACTOR
from ..broker.redis_broker import create_broker
from ..broker.registry import Registration
from ..broker.shared_state import NodeState
from ..cloud.client import CloudClient
from ..cloud.clock import CloudClock
from ..control.ticker import Tick, Ticker
from ..errors import ConfigError, VPNError
from ..identity.connect import connect_node, load_node_settings
from ..sdnotify import CycleNotifier
from ..settings import Settings
from .intake import StreamBridge

__all__ = ["connect", "run_bridge"]

#: How long the VPN preflight may keep failing right after the tunnel came up.
VPN_SETTLE_SEC = 10.0
VPN_SETTLE_POLL_SEC = 1.0
#: Socket timeouts of the broker client that holds the bridge's registration, in seconds.
REGISTRY_TIMEOUT_SEC = 5.0

logger = logging.getLogger(__name__)


class _LazyVpn:
    """The OpenVPN manager, imported only when the cloud asks for a tunnel."""

    def __init__(self) -> None:
        self._manager: Any = None

    def _get(self) -> Any:
        if self._manager is None:
            from ..vpn.openvpn import OpenVPNManager

            self._manager = OpenVPNManager()
        return self._manager

    def restore(self, settings: Settings) -> bool:
        return bool(self._get().restore(settings))

    def bring_up(self, settings: Settings, profile: str) -> bool:
        return bool(self._get().bring_up(settings, profile))

    def stop(self, settings: Settings) -> None:
        self._get().stop(settings)

    def ensure_running(self, settings: Settings) -> None:
        self._get().ensure_running(settings)


def connect(
    *, overrides: Mapping[str, Any] | None = None, token: str | None = None, vpn: Any = None
) -> Settings:
    """Load settings, talk to the connect endpoint, bring up and check the VPN; return the node's settings."""
    settings = load_node_settings(overrides=overrides)
    vpn = vpn if vpn is not None else _LazyVpn()
    connectivity = _known_connectivity(settings)
    client = CloudClient(settings)
    try:
        settings = connect_node(settings, token=token, connectivity=connectivity, vpn=vpn, client=client)
    finally:
        client.close()
    _share_clock(settings, client.clock)
    if settings.vpn_required:
        from ..vpn.guard import preflight

        if settings.node_auto_vpn:
            vpn.ensure_running(settings)
        _settled_preflight(settings, preflight)
    return settings


def _settled_preflight(settings: Settings, preflight: Any) -> None:
    """The VPN preflight, given a few seconds: a fresh tun device can be up before its address and routes."""
    deadline = time.monotonic() + VPN_SETTLE_SEC
    while True:
        try:
            preflight(settings)
            return
        except VPNError:
            if time.monotonic() > deadline:
                raise
            time.sleep(VPN_SETTLE_POLL_SEC)


def _share_clock(settings: Settings, clock: CloudClock) -> None:
    """The cloud clock's offset the connect measured, for the first tokens of the node's other processes."""
    if not settings.qpu_id or not clock.measured:
        return
    try:
        client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            NodeState(client, settings.qpu_id).set_clock_offset(clock.offset_sec)
        finally:
            client.close()
    except redis.RedisError as exc:  # each process measures its own from its first answer
        logger.debug("Clock offset not shared (%s).", exc)


def _known_connectivity(settings: Settings) -> list[list[int]] | None:
    """Coupling edges an executor worker recorded earlier, if any (the bridge never loads the executor)."""
    if not settings.qpu_id:
        return None
    try:
        client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return NodeState(client, settings.qpu_id).connectivity()
        finally:
            client.close()
    except redis.RedisError:
        return None


def _register(settings: Settings) -> Registration | None:
    """Register this bridge, refusing (:class:`BridgeTaken`) while another holds its QPU and consumer name.

    None while the QPU is not known yet (a first start registers once connected).
    """
    if not settings.qpu_id:
        return None
    client = redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=REGISTRY_TIMEOUT_SEC, socket_timeout=REGISTRY_TIMEOUT_SEC
    )
    try:
        return Registration(
            client, settings.qpu_id, "bridge", consumer=settings.resolved_consumer_name
        ).start()
    except BaseException:
        client.close()
        raise


def _unregister(registration: Registration | None) -> None:
    if registration is not None:
        registration.stop()
        registration.client.close()


def run_bridge(*, overrides: Mapping[str, Any] | None = None, token: str | None = None) -> None:
    """Run the bridge until SIGTERM or SIGINT, then stop reading and exit."""
    registration = _register(load_node_settings(overrides=overrides))  # before connecting, when it can
    try:
        settings = connect(overrides=overrides, token=token)
        registration = registration or _register(settings)
        _run_connected(settings)
    finally:
        _unregister(registration)


def _run_connected(settings: Settings) -> None:
    if not settings.redis_url:
        raise ConfigError("the cloud did not name a job Redis (redis_url); cannot read jobs")
    assert settings.qpu_id
    broker = create_broker(settings)
    state = NodeState(broker.client, settings.qpu_id)
    ticker = Ticker(
        broker,
        settings.qpu_id,
        [
            Tick(HEARTBEAT_ACTOR, settings.heartbeat_interval_sec),
            Tick(VPN_CHECK_ACTOR, settings.vpn_check_interval_sec),
        ],
    )
    # under a Type=notify unit: READY=1 once the cloud's stream is read, then a watchdog ping per round
    notifier = CycleNotifier(ready=state.cloud_redis_healthy)
    bridge = StreamBridge(settings, broker, state, on_cycle=notifier.cycle)

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("Bridge received %s; stopping.", signal.Signals(signum).name)
        bridge.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ticker.start()
    try:
        bridge.run()
    finally:
        ticker.stop()
        broker.close()
