"""What every actor module shares: the settings, this process's parts, the broker and its middleware."""

from __future__ import annotations

import sys

import dramatiq

from coda_bridge.broker.middleware import BuildAtBoot, StaleTicks, StoppingFlag
from coda_bridge.broker.outage import install_outage_log, shown_broker
from coda_bridge.broker.queues import JOBS_QUEUE
from coda_bridge.broker.redis_broker import create_broker
from coda_bridge.broker.registry import Deregister, Registration
from coda_bridge.identity.waiting import identity_or_exit, worker_role
from coda_bridge.logs import configure_logging
from coda_bridge.parts import NodeParts

#: jobs, results or control (the one queue of this worker), or node (a worker of every queue).
role = worker_role(sys.argv)
settings = identity_or_exit(role)
configure_logging(settings.log_level, settings.log_format)
# a jobs worker signs only for an inline delivery during a drain, and only with a key it was given
parts = NodeParts(settings)
install_outage_log(shown_broker(parts.local_redis))  # dramatiq's CRITICAL every 3 s: one WARNING a minute
registration = Registration(parts.local_redis, parts.qpu_id, role).start()
stopping = StoppingFlag()
broker = create_broker(settings)
broker.add_middleware(BuildAtBoot(JOBS_QUEUE, parts.host.executor, "Executor", registration.executor_built))
broker.add_middleware(StaleTicks())
broker.add_middleware(stopping)
broker.add_middleware(Deregister(registration))
dramatiq.set_broker(broker)

__all__ = ["broker", "parts", "registration", "role", "settings", "stopping"]
