"""What every actor module shares: the settings, this process's parts, the broker and its middleware."""

from __future__ import annotations

import dramatiq

from coda_bridge.broker.middleware import BuildAtBoot, StaleTicks, StoppingFlag
from coda_bridge.broker.queues import JOBS_QUEUE
from coda_bridge.broker.redis_broker import create_broker
from coda_bridge.identity.waiting import wait_for_identity
from coda_bridge.logs import configure_logging
from coda_bridge.parts import NodeParts

settings = wait_for_identity()
configure_logging(settings.log_level)
parts = NodeParts(settings)
stopping = StoppingFlag()
broker = create_broker(settings)
broker.add_middleware(BuildAtBoot(JOBS_QUEUE, parts.host.executor, "Executor"))
broker.add_middleware(StaleTicks())
broker.add_middleware(stopping)
dramatiq.set_broker(broker)

__all__ = ["broker", "parts", "settings", "stopping"]
