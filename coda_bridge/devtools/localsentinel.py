"""A throw-away Redis Sentinel deployment on loopback: a primary, replicas and three sentinels.

Used by the failover test and ``bench/sentinel_failover.py`` in place of a
:class:`~coda_bridge.devtools.localredis.LocalRedis` broker: it has the same
``url``, ``client()``, ``start()`` and ``stop()``, its ``url`` is a
``redis+sentinel://`` URL, and :meth:`LocalSentinel.kill_primary` kills the
primary with SIGKILL so the sentinels promote a replica.  The data servers
are ``redis-server`` (as :class:`LocalRedis` finds it); the sentinels are
the system's ``redis-sentinel`` (Debian's package of that name).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ..errors import ConfigError
from ..queueing.broker_client import broker_client
from .localredis import LocalRedis, free_port

__all__ = ["LocalSentinel", "find_redis_sentinel"]

#: The service name the sentinels monitor.
SERVICE = "coda-broker"
#: How long the deployment may take to be ready (replicas in sync, sentinels aware of each other).
READY_TIMEOUT_SEC = 30.0
#: How often waits look again.
POLL_SEC = 0.05


def find_redis_sentinel() -> str:
    """The path of ``redis-sentinel``, or :class:`ConfigError` saying how to get it."""
    found = shutil.which("redis-sentinel")
    if not found:
        raise ConfigError("no redis-sentinel on PATH: install it (Debian: apt-get install redis-sentinel)")
    return found


class LocalSentinel:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2), stopped on exit."""

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
    ) -> None:
        self.sentinel_binary = find_redis_sentinel()
        self.servers = [LocalRedis() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        #: Asked by the primary and the replicas (``requirepass``), not by the sentinels.
        self.password = password
        self.sentinel_processes: list[subprocess.Popen[bytes]] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"

    def client(self) -> redis.Redis:
        """A client of the current primary, as the node gets it."""
        return broker_client(self.url, decode_responses=True)

    def start(self) -> LocalSentinel:
        """Start the servers, make the replicas follow the first, start the sentinels; wait until ready."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="coda-sentinel-")
        for server in self.servers:
            server.start()
        primary = self.servers[0]
        for index, server in enumerate(self.servers):
            with redis.Redis(port=server.port, socket_timeout=5) as client:
                if self.password:
                    client.config_set("masterauth", self.password)
                if index:
                    client.replicaof("127.0.0.1", primary.port)
                if self.password:
                    client.config_set("requirepass", self.password)
        auth = f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else ""
        for index, port in enumerate(self.sentinel_ports):
            conf = Path(self._dir.name) / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self._dir.name}\nloglevel warning\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n{auth}"
            )
            self.sentinel_processes.append(
                subprocess.Popen(
                    [self.sentinel_binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        self._wait(self._ready, "the replicas to sync and the sentinels to find each other")

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)

    def _server(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=1, socket_connect_timeout=1)

    def _ready(self) -> bool:
        replicas = len(self.servers) - 1
        for port in self.sentinel_ports:
            with self._sentinel(port) as sentinel:
                state = sentinel.sentinel_master(SERVICE)
            if int(state.get("num-slaves", 0)) < replicas:
                return False
            if int(state.get("num-other-sentinels", 0)) < len(self.sentinel_ports) - 1:
                return False
        for replica in self.servers[1:]:
            with self._server(replica.port) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _wait(self, condition: object, what: str, timeout_sec: float = READY_TIMEOUT_SEC) -> None:
        deadline = time.monotonic() + timeout_sec
        while True:
            try:
                if callable(condition) and condition():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"timed out after {timeout_sec:g} s waiting for {what}")
            time.sleep(POLL_SEC)

    def primary_port(self) -> int:
        """The port of the primary the first sentinel that answers names."""
        for port in self.sentinel_ports:
            try:
                with self._sentinel(port) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SERVICE)
            except (redis.RedisError, OSError):
                continue
            if address:
                return int(address[1])
        raise ConfigError("no sentinel names a primary")

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no shutdown, nothing more reaches the replicas); its port."""
        port = self.primary_port()
        for server in self.servers:
            if server.port == port and server.process is not None:
                server.process.send_signal(signal.SIGKILL)
                server.process.wait()
                return port
        raise ConfigError(f"the primary on port {port} is not one of this deployment's servers")

    def wait_promoted(self, old_port: int, timeout_sec: float = READY_TIMEOUT_SEC) -> int:
        """Wait until every sentinel names another primary and it answers as one; its port."""

        def promoted() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                with self._sentinel(port) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                ports.add(int(address[1]) if address else 0)
            if len(ports) != 1 or old_port in ports or 0 in ports:
                return False
            with self._server(ports.pop()) as client:
                return bool(client.role()[0] == b"master")

        self._wait(promoted, f"a replica to be promoted in place of port {old_port}", timeout_sec)
        return self.primary_port()

    def stop(self) -> None:
        """Stop the sentinels and the servers, and remove the sentinels' directory."""
        for process in self.sentinel_processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.sentinel_processes = []
        for server in self.servers:
            server.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
