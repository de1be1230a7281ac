"""Every process of a node registers itself in the broker, so ``status`` sees the whole node.

A process writes one key, ``coda-bridge:{qpu_id}:process:{host}:{pid}:{role}``,
holding its role, host, pid, version and start time, with a TTL that a
heartbeat thread refreshes; a process that dies disappears within the TTL.
However the node was started (``coda-bridge start``, honcho, systemd,
Kubernetes, several hosts), :func:`live_processes` lists what runs.

A jobs worker also holds ``coda-bridge:{qpu_id}:ready:{host}:{pid}`` once
its executor is built (:meth:`Registration.executor_built`), refreshed and
removed with its registration; :func:`ready_jobs_workers` lists the live
ones, which is how the node knows it can run jobs.  A key of its own: in
one process, the bridge's, the web app's and the workers' registrations
share the process key.  The QPU's index of ready keys (a sorted set scored
by when each expires, on the broker's clock) finds them in two round trips
however many keys the broker holds: ``/ready`` asks on every probe.

A bridge also holds ``coda-bridge:{qpu_id}:bridge:{consumer}``: a second
bridge for the same QPU and consumer name refuses to start
(:class:`BridgeTaken`, exit 78), naming the live one.  A holder that died
is recognised (same host, its pid gone; or its key not refreshed until it
expires) and replaced, so a restart after ``kill -9`` is not refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import dramatiq
import psutil
import redis

from ..errors import ConfigError
from ..queueing.outage import broker_unavailable
from ..version import __version__
from .broker_keys import bridge_key, process_key, process_pattern, ready_index_key, ready_key

__all__ = [
    "REFRESH_SEC",
    "REGISTRATION_TTL_SEC",
    "BridgeTaken",
    "Deregister",
    "ProcessInfo",
    "Registration",
    "bridge_key",
    "live_processes",
    "process_key",
    "ready_jobs_workers",
    "ready_key",
]

logger = logging.getLogger(__name__)

#: How long a registration outlives its last refresh, in seconds.
REGISTRATION_TTL_SEC = 15.0
#: How often the heartbeat thread refreshes it, in seconds (well under the TTL).
REFRESH_SEC = 5.0
#: How often a starting bridge looks again at a holder that may be dead, in seconds.
CLAIM_POLL_SEC = 0.2
#: A process that holds a registered pid but started this much after the registration was written
#: holds a reused pid (the slack covers the rounding of process start times), in seconds.
PID_REUSE_SLACK_SEC = 2.0
#: Keys read per SCAN round trip when listing processes.
SCAN_COUNT = 200

# Refresh the bridge key if it is ours or gone (a flushed broker); 1 when ours afterwards.
_REFRESH_IF_OURS = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Write a ready key (KEYS[1], value ARGV[1], time to live ARGV[2] ms) and put it in the index (KEYS[2]),
# scored by when it expires on the broker's clock; members past that leave, and the index expires
# with its longest-lived member.
_MARK_READY = """
local now = redis.call('time')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expires_ms = now_ms + tonumber(ARGV[2])
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('zremrangebyscore', KEYS[2], '-inf', now_ms)
redis.call('zadd', KEYS[2], expires_ms, KEYS[1])
local last = redis.call('zrange', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('pexpireat', KEYS[2], math.max(expires_ms, tonumber(last[2])))
return 1
"""
# Delete the key only while it still holds ARGV[1] (a dead holder replaced, or our own at exit).
_DELETE_IF_HELD_BY = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _pid_namespace() -> str:
    """This process's pid namespace (two containers on one host name may not see each other's pids)."""
    try:
        return str(Path("/proc/self/ns/pid").stat().st_ino)
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessInfo:
    """What a registration says about one process."""

    role: str
    host: str
    pid: int
    version: str
    since: float
    pid_namespace: str = ""
    consumer: str | None = None
    #: A worker whose executor is built (it can run jobs now).
    executor_ready: bool = False

    @classmethod
    def here(cls, role: str, consumer: str | None = None) -> ProcessInfo:
        return cls(
            role=role,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            since=time.time(),
            pid_namespace=_pid_namespace(),
            consumer=consumer,
        )

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, raw: bytes | str) -> ProcessInfo | None:
        """The info in a key's value, or None for a value that is not one (never raises)."""
        try:
            data = json.loads(raw)
            return cls(
                role=str(data["role"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                version=str(data["version"]),
                since=float(data["since"]),
                pid_namespace=str(data.get("pid_namespace") or ""),
                consumer=data.get("consumer"),
                executor_ready=data.get("executor_ready") is True,
            )
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host} (version {self.version}, since {started})"

    def dead_here(self) -> bool:
        """Whether this is a process of this host and pid namespace that no longer runs.

        A zombie counts as gone, and so does a pid taken by a process started after this one registered.
        """
        if not self.local():
            return False
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            return process.create_time() > self.since + PID_REUSE_SLACK_SEC
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:  # alive, another user's
            return False

    def local(self) -> bool:
        """Whether this process runs here: this host and pid namespace (so its pid can be checked)."""
        return self.host == socket.gethostname() and self.pid_namespace == _pid_namespace()

    def is_me(self) -> bool:
        return self.local() and self.pid == os.getpid()


class BridgeTaken(ConfigError):
    """Another bridge for this QPU and consumer name is alive; exits ``EX_CONFIG`` (78)."""

    exit_code = os.EX_CONFIG


class Registration:
    """This process's registration: written at :meth:`start`, refreshed by a thread, removed at :meth:`stop`.

    With ``consumer`` (a bridge), :meth:`start` first claims the bridge key
    and raises :class:`BridgeTaken` when a live bridge holds it.
    """

    def __init__(
        self,
        client: redis.Redis,
        qpu_id: str,
        role: str,
        *,
        consumer: str | None = None,
        ttl_sec: float = REGISTRATION_TTL_SEC,
        refresh_sec: float = REFRESH_SEC,
    ) -> None:
        self.client = client
        self.qpu_id = qpu_id
        self.info = ProcessInfo.here(role, consumer)
        self.ttl_ms = int(ttl_sec * 1000)
        self.refresh_sec = refresh_sec
        self.key = process_key(qpu_id, self.info.host, self.info.pid, role)
        self.bridge_key = bridge_key(qpu_id, consumer) if consumer else None
        self._value = self.info.dumps()
        #: The ready key and its value, once the executor is built.
        self._ready: tuple[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh = client.register_script(_REFRESH_IF_OURS)
        self._delete = client.register_script(_DELETE_IF_HELD_BY)
        self._mark_ready = client.register_script(_MARK_READY)
        self._ready_index = ready_index_key(qpu_id)

    def start(self) -> Registration:
        """Claim the bridge key (errors go on), then register; a broker that is down now is retried later.

        A bridge cannot claim its key from a broker that does not answer: :class:`BrokerUnavailable`.
        """
        if self.bridge_key is not None:
            try:
                self._claim_bridge(self.bridge_key)
            except redis.RedisError as exc:
                raise broker_unavailable(self.client, exc) from None
        try:
            self.client.set(self.key, self._value, px=self.ttl_ms)
        except redis.RedisError as exc:
            logger.warning(
                "Cannot register %s yet, retrying: %s", self.info.role, broker_unavailable(self.client, exc)
            )
        self._thread = threading.Thread(target=self._beat, name=f"registry-{self.info.role}", daemon=True)
        self._thread.start()
        return self

    def executor_built(self) -> None:
        """Mark this worker able to run jobs: its executor is built (never called by a bridge)."""
        if self.bridge_key is not None:
            raise ValueError("a bridge registration has no executor")
        ready = replace(self.info, executor_ready=True)
        self._ready = (ready_key(self.qpu_id, ready.host, ready.pid), ready.dumps())
        try:
            self._write_ready(self._ready)
        except redis.RedisError as exc:  # the refresh thread writes it once the broker answers
            logger.warning(
                "Cannot mark %s ready yet, retrying: %s", self.info.role, broker_unavailable(self.client, exc)
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh_sec + 1)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.key)
            if self._ready is not None:
                self.client.delete(self._ready[0])
                self.client.zrem(self._ready_index, self._ready[0])
            if self.bridge_key is not None:
                self._delete(keys=[self.bridge_key], args=[self._value])

    def _beat(self) -> None:
        while not self._stop.wait(self.refresh_sec):
            try:
                self.client.set(self.key, self._value, px=self.ttl_ms)
                if self._ready is not None:
                    self._write_ready(self._ready)
                if self.bridge_key is not None and not self._refresh(
                    keys=[self.bridge_key], args=[self._value, self.ttl_ms]
                ):
                    holder = ProcessInfo.loads(self.client.get(self.bridge_key) or b"")
                    logger.error(
                        "Another bridge took consumer name %s of QPU %s (%s); stop one of them.",
                        self.info.consumer,
                        self.qpu_id,
                        holder.describe() if holder else "unknown holder",
                    )
            except redis.RedisError as exc:
                logger.debug("Registration refresh failed (%s); trying again in %g s.", exc, self.refresh_sec)

    def _write_ready(self, ready: tuple[str, str]) -> None:
        key, value = ready
        self._mark_ready(keys=[key, self._ready_index], args=[value, self.ttl_ms])

    def _claim_bridge(self, key: str) -> None:
        """Take the bridge key, replacing a dead holder; :class:`BridgeTaken` naming a live one."""
        deadline = time.monotonic() + self.ttl_ms / 1000 + self.refresh_sec
        last_ttl_ms: int | None = None
        while True:
            if self.client.set(key, self._value, nx=True, px=self.ttl_ms):
                return
            raw = self.client.get(key)
            if raw is None:
                continue  # expired between the two calls
            holder = ProcessInfo.loads(raw)
            if holder is not None and holder.is_me():
                self.client.set(key, self._value, px=self.ttl_ms)
                return
            if holder is None or holder.dead_here():
                logger.info("Replacing the registration of a bridge that is gone (%s).", _shown(holder))
                self._delete(keys=[key], args=[raw])
                continue
            ttl_ms = int(self.client.pttl(key))
            refreshed = last_ttl_ms is not None and ttl_ms > last_ttl_ms
            if holder.local() or refreshed or time.monotonic() > deadline:
                raise BridgeTaken(
                    f"another bridge for QPU {self.qpu_id} with consumer name {self.info.consumer!r} "
                    f"is running: {holder.describe()}; stop it, or give this one another CODA_CONSUMER_NAME"
                )
            last_ttl_ms = ttl_ms
            time.sleep(CLAIM_POLL_SEC)


class Deregister(dramatiq.Middleware):
    """Removes a worker's registration when the worker stops (its key would otherwise linger for the TTL)."""

    def __init__(self, registration: Registration) -> None:
        self.registration = registration

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.registration.stop()


def _shown(info: ProcessInfo | None) -> str:
    return info.describe() if info else "an unreadable registration"


def live_processes(client: redis.Redis, qpu_id: str) -> list[ProcessInfo]:
    """Every registered process of the QPU, by role, host and pid."""
    return _live(client, list(client.scan_iter(match=process_pattern(qpu_id), count=SCAN_COUNT)))


def ready_jobs_workers(client: redis.Redis, qpu_id: str) -> list[ProcessInfo]:
    """The live workers of the QPU whose executor is built: none means the node cannot run a job.

    Two round trips, the index and its keys: no ``SCAN`` (a member whose key expired is not live).
    """
    keys: list[Any] = client.zrange(ready_index_key(qpu_id), 0, -1)
    return [info for info in _live(client, keys) if info.executor_ready]


def _live(client: redis.Redis, keys: list[Any]) -> list[ProcessInfo]:
    found: list[ProcessInfo] = []
    if keys:
        values: list[Any] = client.mget(keys)
        found = [info for raw in values if raw is not None and (info := ProcessInfo.loads(raw)) is not None]
    # a process of this host that is gone is not live, whatever its key's time to live says
    found = [info for info in found if not info.dead_here()]
    return sorted(found, key=lambda info: (info.role, info.host, info.pid))
