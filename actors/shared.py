"""The broker the actors are declared on, and the node they work for: connected at process boot.

Importing declares actors and nothing else: :data:`broker` has no connection
and no node yet, and :class:`NodeBoot` is its one middleware.  Once per process
(dramatiq's ``after_process_boot``, or :func:`boot` from the node's own runners)
it waits for the identity this worker's role needs, builds the node's parts,
the broker's connection and middleware from the settings, sets the actors'
settings-dependent options and registers the process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, NoReturn

import dramatiq
import redis
from dramatiq.middleware import Middleware, TimeLimit, default_middleware

from coda_bridge.backoff import Backoff
from coda_bridge.components import NodeComponents
from coda_bridge.control.hold import DeviceWatch, HoldJobs
from coda_bridge.control.maintenance import MaintenanceWindows
from coda_bridge.control.pause_book import PauseBook
from coda_bridge.identity.waiting import identity_or_exit, worker_role
from coda_bridge.logs import configure_logging
from coda_bridge.queueing.middleware import (
    Build,
    BuildAtBoot,
    IsolateWorkerProcess,
    PromptAfterOutage,
    StaleTicks,
    StoppingFlag,
    SystemdNotify,
)
from coda_bridge.queueing.outage import install_outage_log, shown_broker
from coda_bridge.queueing.queues import DELIVER_ACTOR, JOBS_QUEUE, RESULTS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.registry import Deregister, Registration

from .actor_options import actor_options

__all__ = ["Node", "NodeBoot", "boot", "broker", "node"]

logger = logging.getLogger(__name__)

#: First and longest pause between boots of a worker whose broker Redis errs (away, restarting, slow).
BOOT_RETRY_START_SEC = 1.0
BOOT_RETRY_MAX_SEC = 30.0


class Node:
    """What the actors work with, filled in by :func:`boot` (nothing of it exists at import)."""

    def __init__(self) -> None:
        #: Set once this worker process begins to stop (a middleware of the booted broker).
        self.stopping = StoppingFlag()
        self._settings: Settings | None = None
        self._parts: NodeComponents | None = None
        self.registration: Registration | None = None
        #: The node's pause and device-state records (a job prepared ahead gives way while one holds).
        self._pauses: PauseBook | None = None
        #: jobs, results or control (the one queue of this worker), or node (a worker of every queue).
        self.role = "node"

    @property
    def booted(self) -> bool:
        return self._parts is not None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise RuntimeError(
                "the actors' node is not booted: dramatiq's process boot (or actors.boot) runs first"
            )
        return self._settings

    @property
    def parts(self) -> NodeComponents:
        if self._parts is None:
            raise RuntimeError(
                "the actors' node is not booted: dramatiq's process boot (or actors.boot) runs first"
            )
        return self._parts

    @property
    def pauses(self) -> PauseBook:
        if self._pauses is None:
            self._pauses = PauseBook(self.parts.local_redis, self.parts.qpu_id)
        return self._pauses

    def use(self, settings: Settings, parts: NodeComponents) -> None:
        """Work with these settings and parts (a test on StubBroker gives its own)."""
        self._settings, self._parts = settings, parts


class NodeBoot(Middleware):
    """The only middleware of the unbooted broker: at process boot, the node and the broker's real stack.

    It takes every actor option of that stack, so the actors can be declared
    before the stack exists (dramatiq checks options at declaration).
    """

    def __init__(self, node: Node, *, isolate: bool = True) -> None:
        self.node = node
        #: Whether the worker process leaves the terminal's process group (not under the node's runners).
        self.isolate = isolate

    @property
    def actor_options(self) -> set[str]:
        return _STACK_OPTIONS

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Boot the node, or end the process: dramatiq logs and swallows an error raised here, and a
        worker left half-booted would take jobs and fail each one ("not booted")."""
        if self.node.booted:
            return
        backoff = Backoff(BOOT_RETRY_START_SEC, BOOT_RETRY_MAX_SEC)
        while True:
            try:
                boot(broker, self.node, isolate=self.isolate)
                return
            except redis.RedisError as exc:
                if (
                    self.node.booted
                ):  # it failed with the node in use: booting again would stack its middleware
                    _boot_failed(exc)
                # the broker Redis away or slow before anything was set up: wait for it, as for the identity
                delay = backoff.next_delay()
                logger.warning("Worker boot met the broker Redis: %s; trying again in %.1f s.", exc, delay)
                time.sleep(delay)
            except Exception as exc:
                _boot_failed(exc)


def _boot_failed(exc: Exception) -> NoReturn:
    logger.critical(
        "Worker boot failed (%s: %s); this worker process exits to be started again.",
        type(exc).__name__,
        exc,
        exc_info=True,
    )
    raise SystemExit(os.EX_SOFTWARE) from exc


#: Every option dramatiq's own middleware and the node's take: the booted stack checks them per message.
_STACK_OPTIONS = {
    *(option for middleware in default_middleware for option in middleware().actor_options),
    *StaleTicks.actor_options,
}


def boot(
    broker: dramatiq.Broker,
    node: Node,
    *,
    settings: Settings | None = None,
    isolate: bool = True,
) -> None:
    """Wait for this role's identity, then build the node and the broker's connection and middleware.

    ``settings`` given (``start --one-process`` has connected already) skips the wait.
    """
    node.role = worker_role(sys.argv)
    settings = settings or identity_or_exit(node.role)
    configure_logging(settings.log_level, settings.log_format)
    # a jobs worker signs only for an inline delivery during a drain, and only with a key it was given
    parts = NodeComponents(settings)
    install_outage_log(shown_broker(parts.local_redis))  # dramatiq's CRITICAL every 3 s: one WARNING a minute
    built = create_broker(settings)
    if isinstance(broker, CodaBroker):
        _take_connection(broker, built)
    registration = Registration(parts.local_redis, parts.qpu_id, node.role).start()
    node.use(settings, parts)
    node.registration = registration
    pauses = node.pauses
    broker.middleware = [m for m in broker.middleware if not isinstance(m, NodeBoot)]
    for middleware in [
        *built.middleware,
        *_node_middleware(settings, parts, pauses, node.stopping, registration),
    ]:
        broker.add_middleware(middleware)
    # before TimeLimit: a job held by a pause or the device's state is not yet running
    device = DeviceWatch(parts.host.executor, pauses, settings.device_poll_interval_sec)
    broker.add_middleware(HoldJobs(pauses, device), before=TimeLimit)
    broker.add_middleware(SystemdNotify())  # last: READY=1 once every other boot step is done
    _set_options(broker, actor_options(settings))
    for middleware in reversed(broker.middleware):  # as dramatiq's process boot runs them
        if isolate or not isinstance(middleware, IsolateWorkerProcess):
            middleware.after_process_boot(broker)


def _take_connection(broker: CodaBroker, built: CodaBroker) -> None:
    """The declared broker talks to the node's Redis, in its namespace, as ``built`` would."""
    broker.client = built.client
    broker.scripts = built.scripts
    broker.namespace = built.namespace
    broker.heartbeat_timeout = built.heartbeat_timeout
    broker.dead_message_ttl = built.dead_message_ttl
    broker.enqueue_hooks = built.enqueue_hooks
    for queue in built.queues:
        broker.declare_queue(queue)


def _node_middleware(
    settings: Settings,
    parts: NodeComponents,
    pauses: PauseBook,
    stopping: StoppingFlag,
    registration: Registration,
) -> list[Middleware]:
    """The node's own middleware, after dramatiq's (HoldJobs and SystemdNotify are placed by :func:`boot`)."""
    return [
        BuildAtBoot(
            Build(JOBS_QUEUE, parts.host.executor, "Executor", registration.executor_built),
            # the key is read and checked once, before the first result waits on it (a bad key stops
            # the worker)
            Build(RESULTS_QUEUE, lambda: parts.deliverer, "The result signer"),
        ),
        StaleTicks(),
        MaintenanceWindows(
            settings.maintenance_windows,
            pauses,
            parts.host.executor,
            lambda: parts.host.processes.slots,
            concurrency=settings.executor_concurrency,
            command=settings.calibration_command,
            timeout_sec=settings.calibration_timeout_sec,
            resume_after_hook=settings.maintenance_resume == "hook_end",
        ),
        stopping,
        Deregister(registration),
        # after an outage, the deliveries waiting on their retry backoff go as soon as the cloud answers again
        PromptAfterOutage(parts.state.cloud_back_at, DELIVER_ACTOR, RESULTS_QUEUE),
    ]


def _set_options(broker: dramatiq.Broker, options: Mapping[str, Mapping[str, Any]]) -> None:
    """The options that come from the settings, on the declared actors (dramatiq reads them per message)."""
    for name, values in options.items():
        if name in broker.actors:
            broker.get_actor(name).options.update(values)


#: The one node of this process.
node = Node()
#: The broker every actor is declared on: no connection until :func:`boot`.
broker = CodaBroker(middleware=[NodeBoot(node)])
dramatiq.set_broker(broker)
