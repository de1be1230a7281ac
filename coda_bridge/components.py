"""What one process of the node builds once: its clients, and the objects each step of a job takes.

Each worker, the bridge and the web app build one :class:`NodeComponents` at
start.  It parses the signing key once, and only in a process that signs
(``signs``, and a key in its settings), keeps one pooled HTTP session and
one client per Redis, and builds only what the process uses: an executor
worker never signs unless it delivers inline during a drain, a delivery
worker never loads the executor.  Steps get the few parts they need, not
the whole.
"""

from __future__ import annotations

from functools import cached_property

import redis

from .cloud.clock import CloudClock
from .cloud.http_client import CloudClient
from .cloud.reachability import Reachability
from .cloud.redis_client import REDIS_SOCKET_TIMEOUT_SEC, cloud_redis_client
from .cloud.signing import Signer
from .errors import ConfigError
from .executors.host import ExecutorHost
from .identity.connect import node_signer
from .pipeline.claims import ClaimBook
from .pipeline.delivery import Deliverer
from .pipeline.execute import Execution
from .pipeline.job_records import RecordStore
from .pipeline.runs import Runner
from .pipeline.status import CloudStatus
from .pipeline.timeline import Timeline
from .queueing.broker_client import broker_client
from .queueing.entry_index import EntryIndex
from .queueing.redis_broker import broker_namespace
from .settings import Settings
from .state.node_state import NodeState

__all__ = ["NodeComponents", "settings_have_key"]


def settings_have_key(settings: Settings) -> bool:
    """A key is configured or persisted, and with it its id (nothing is parsed)."""
    return settings.jwt_private_key is not None and bool(settings.jwt_key_id)


class NodeComponents:
    """Built on first use, then kept for the life of the process."""

    def __init__(self, settings: Settings, *, signs: bool = True) -> None:
        if not settings.qpu_id:
            raise ConfigError("qpu_id is not known yet: the node has not connected to the cloud")
        self.settings = settings
        self.qpu_id: str = settings.qpu_id
        self._signs = signs

    @property
    def can_sign(self) -> bool:
        """Whether this process signs: it may, and its settings hold a key (the key is not parsed here)."""
        return self._signs and settings_have_key(self.settings)

    # -- clients --

    @cached_property
    def local_redis(self) -> redis.Redis:
        return broker_client(
            self.settings.broker_url,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SEC,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SEC,
        )

    @cached_property
    def cloud_redis(self) -> redis.Redis:
        if not self.settings.redis_url:
            raise ConfigError("redis_url is not known: the cloud bundle did not name the job Redis")
        return cloud_redis_client(self.settings.redis_url)

    @cached_property
    def clock(self) -> CloudClock:
        """The cloud clock's offset, shared with the node's other processes."""
        return CloudClock(self.state)

    @cached_property
    def cloud(self) -> CloudClient:
        return CloudClient(self.settings, clock=self.clock, reachability=Reachability(self.state))

    @cached_property
    def signer(self) -> Signer:
        """The key, parsed on first use; a process that does not sign refuses without reading it."""
        if not self.can_sign:
            raise ConfigError(
                "this process holds no private key (it does not sign); results are delivered by the "
                "results worker"
            )
        return node_signer(self.settings, clock=self.clock.now)

    # -- what the steps take --

    @cached_property
    def state(self) -> NodeState:
        return NodeState(self.local_redis, self.qpu_id)

    @cached_property
    def status(self) -> CloudStatus:
        return CloudStatus(self.cloud_redis, self.qpu_id)

    @cached_property
    def records(self) -> RecordStore:
        return RecordStore(self.local_redis, self.qpu_id, retention_sec=self.settings.record_retention_sec)

    @cached_property
    def timeline(self) -> Timeline:
        """Each job's steps, for ``coda-bridge job``."""
        return Timeline(self.local_redis, self.qpu_id, retention_sec=self.settings.record_retention_sec)

    @cached_property
    def entries(self) -> EntryIndex:
        return EntryIndex(
            self.local_redis,
            self.qpu_id,
            broker_namespace(self.qpu_id),
            heartbeat_timeout_sec=self.settings.worker_heartbeat_timeout_sec,
        )

    @cached_property
    def host(self) -> ExecutorHost:
        return ExecutorHost(self.settings, self.state)

    @cached_property
    def execution(self) -> Execution:
        runner = Runner(
            self.host,
            self.status,
            self.state,
            job_time_limit_sec=self.settings.job_time_limit_sec,
            cancel_poll_sec=self.settings.cancel_poll_interval_sec,
            stop_grace_sec=self.settings.executor_stop_grace_sec,
            max_crashes=self.settings.max_executor_crashes,
            timeline=self.timeline,
        )
        claims = ClaimBook(
            self.local_redis, self.qpu_id, self.records, self.state, lease_sec=self.settings.claim_lease_sec
        )
        return Execution(
            self.settings,
            self.status,
            self.records,
            claims,
            self.host,
            runner,
            self.state,
            self.entries,
            self.timeline,
        )

    @cached_property
    def deliverer(self) -> Deliverer:
        return Deliverer(
            self.settings,
            self.records,
            self.status,
            cloud=self.cloud,
            signer=self.signer,
            state=self.state,
            entries=self.entries,
            timeline=self.timeline,
        )

    def close(self) -> None:
        for name in ("cloud", "local_redis", "cloud_redis"):
            handle = self.__dict__.pop(name, None)
            if handle is not None:
                handle.close()
