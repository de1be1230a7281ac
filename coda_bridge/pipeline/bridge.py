"""The bridge process from start to stop: connect, VPN, ticker, stream bridge, drain.

:class:`BridgeProcess` is the one bridge every launcher runs: ``coda-bridge
bridge`` (the Procfile, systemd, Kubernetes) and the bridge process of
``coda-bridge start`` run it through :func:`run_bridge`, ``start
--one-process`` in a thread.  A stop ends it after its current round; a
stream read that waits for new entries is ended at once (``CLIENT UNBLOCK``:
it returns empty, as at its timeout), or where the cloud's Redis refuses
that, returns within ``stream_block_ms``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import redis

from ..cloud.clock import CloudClock
from ..cloud.http_client import CloudClient
from ..cloud.redis_client import cloud_redis_client
from ..control.ticker import Tick, Ticker
from ..errors import ConfigError, VPNError
from ..identity.connect import connect_node
from ..queueing.broker_client import broker_client
from ..queueing.eviction import EvictionWatch
from ..queueing.queues import HEARTBEAT_ACTOR, VPN_CHECK_ACTOR
from ..queueing.redis_broker import CodaBroker, create_broker
from ..sdnotify import CycleNotifier
from ..settings import Settings
from ..state.node_state import NodeState
from ..state.registry import Registration
from ..vpn.guard import preflight
from .intake import StreamBridge

__all__ = ["BridgeProcess", "connect", "run_bridge"]

#: How long the VPN preflight may keep failing right after the tunnel came up.
VPN_SETTLE_SEC = 10.0
VPN_SETTLE_POLL_SEC = 1.0
#: Socket timeouts of the broker client that holds the bridge's registration, in seconds.
REGISTRY_TIMEOUT_SEC = 5.0
#: Socket timeouts of the look that ends a blocked stream read on a stop, in seconds.
UNBLOCK_TIMEOUT_SEC = 1.0
#: How often a stop looks for the read to end while the bridge's loop still runs.
UNBLOCK_POLL_SEC = 0.05

logger = logging.getLogger(__name__)


class _LazyVpn:
    """The OpenVPN manager, imported only when the cloud asks for a tunnel."""

    def __init__(self) -> None:
        self._manager: Any = None

    def _get(self) -> Any:
        if self._manager is None:
            from ..vpn.openvpn import OpenVPNManager  # noqa: PLC0415 - the OpenVPN manager loads only when a VPN is used

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


def connect(settings: Settings, *, token: str | None = None, vpn: Any = None) -> Settings:
    """Talk to the connect endpoint, bring up and check the VPN; return the node's settings.

    ``settings`` are the ones the process entry loaded (once per process start).
    """
    vpn = vpn if vpn is not None else _LazyVpn()
    connectivity = _known_connectivity(settings)
    client = CloudClient(settings)
    try:
        settings = connect_node(settings, token=token, connectivity=connectivity, vpn=vpn, client=client)
    finally:
        client.close()
    _share_clock(settings, client.clock)
    if settings.vpn_required:
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
        client = broker_client(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
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
        client = broker_client(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
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
    client = broker_client(
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


class BridgeProcess:
    """The bridge on one broker: its registration, the control ticker and the stream bridge, until stopped.

    ``registration``: one the launcher already holds (it releases it);
    otherwise :meth:`register` (or :meth:`run`) takes one on the broker and
    :meth:`run` releases it as it ends.
    """

    def __init__(
        self, settings: Settings, broker: CodaBroker, *, registration: Registration | None = None
    ) -> None:
        if not settings.redis_url:
            raise ConfigError("the cloud did not name a job Redis (redis_url); cannot read jobs")
        assert settings.qpu_id
        self.settings = settings
        self.broker = broker
        self.registration = registration
        self._owns_registration = False
        state = NodeState(broker.client, settings.qpu_id)
        self.ticker = Ticker(
            broker,
            settings.qpu_id,
            [
                Tick(HEARTBEAT_ACTOR, settings.heartbeat_interval_sec),
                Tick(VPN_CHECK_ACTOR, settings.vpn_check_interval_sec),
            ],
        )
        # under a Type=notify unit: READY=1 once the cloud's stream is read, then a watchdog ping per round
        self.notifier = CycleNotifier(ready=state.cloud_redis_healthy)
        #: What this process's connections to the cloud's Redis are called, so a stop finds its read.
        self.client_name = f"coda-bridge-{os.getpid()}-{uuid4().hex[:12]}"  # no spaces (CLIENT SETNAME)
        self._ended = threading.Event()  # set once the reading loop has returned
        cloud = cloud_redis_client(
            settings.redis_url, block_sec=settings.stream_block_ms / 1000, client_name=self.client_name
        )
        self.bridge = StreamBridge(settings, broker, state, cloud=cloud, on_cycle=self.notifier.cycle)

    def register(self) -> BridgeProcess:
        """Hold this QPU's bridge (:class:`~coda_bridge.state.registry.BridgeTaken` while another lives)."""
        if self.registration is None:
            self.registration = Registration(
                self.broker.client,
                self.settings.qpu_id or "",
                "bridge",
                consumer=self.settings.resolved_consumer_name,
            ).start()
            self._owns_registration = True
        return self

    def run(self) -> None:
        """Read and forward until :meth:`stop`; the round under way ends first, then the ticker stops.

        Meanwhile a thread names a broker that evicts keys
        (:class:`~coda_bridge.queueing.eviction.EvictionWatch`).
        """
        self.register()
        self.ticker.start()
        eviction = threading.Thread(
            target=EvictionWatch(self.broker.client).watch,
            args=(self._ended,),
            name="coda-eviction",
            daemon=True,
        )
        eviction.start()
        try:
            self.bridge.run()
        finally:
            self._ended.set()
            self.ticker.stop()
            if self._owns_registration and self.registration is not None:
                self.registration.stop()

    def stop(self) -> None:
        """Ask for a stop (from a signal handler or another thread): no new round starts.

        A read that waits for new entries is ended now, from a thread of its own (never blocks the caller).
        """
        self.bridge.stop()
        threading.Thread(target=self._end_blocked_read, name="coda-bridge-unblock", daemon=True).start()

    def _end_blocked_read(self) -> None:
        """``CLIENT UNBLOCK`` this process's blocked read: it returns empty, as at its timeout (nothing lost).

        A read that begins just after the stop was asked is looked for until the loop ends (at most one
        read's block).  Where the cloud's Redis refuses it (an ACL without ``CLIENT``), the read ends at
        its timeout.
        """
        deadline = time.monotonic() + self.settings.stream_block_ms / 1000 + UNBLOCK_TIMEOUT_SEC
        try:
            client = redis.Redis.from_url(
                self.settings.redis_url or "",
                socket_timeout=UNBLOCK_TIMEOUT_SEC,
                socket_connect_timeout=UNBLOCK_TIMEOUT_SEC,
            )
            try:
                while not self._ended.is_set() and time.monotonic() < deadline:
                    for entry in client.client_list():
                        if entry.get("name") == self.client_name and "b" in entry.get("flags", ""):
                            client.client_unblock(int(entry["id"]))
                    self._ended.wait(UNBLOCK_POLL_SEC)
            finally:
                client.close()
        except redis.RedisError as exc:
            logger.info(
                "Cannot end the blocked stream read early (%s); it ends at its timeout.", type(exc).__name__
            )


def run_bridge(
    settings: Settings,
    *,
    token: str | None = None,
    on_start: Callable[[BridgeProcess], None] | None = None,
) -> None:
    """Connect with the process's ``settings``, then run the bridge until stopped.

    ``on_start`` gets the bridge before it runs (to wire its stop).
    """
    registration = _register(settings)  # before connecting, when it can
    try:
        settings = connect(settings, token=token)
        registration = registration or _register(settings)
        broker = create_broker(settings)
        try:
            process = BridgeProcess(settings, broker, registration=registration)
            if on_start is not None:
                on_start(process)
            process.run()
        finally:
            broker.close()
    finally:
        _unregister(registration)
