"""What every actor module shares: the settings, this process's parts, the broker and its middleware."""

from __future__ import annotations

import sys

import dramatiq
from dramatiq.middleware import TimeLimit

from coda_bridge.broker.middleware import (
    BuildAtBoot,
    PromptAfterOutage,
    StaleTicks,
    StoppingFlag,
    SystemdNotify,
)
from coda_bridge.broker.outage import install_outage_log, shown_broker
from coda_bridge.broker.queues import DELIVER_ACTOR, JOBS_QUEUE, RESULTS_QUEUE
from coda_bridge.broker.redis_broker import create_broker
from coda_bridge.broker.registry import Deregister, Registration
from coda_bridge.control.hold import DeviceWatch, HoldJobs
from coda_bridge.control.maintenance import MaintenanceWindows
from coda_bridge.control.pause import PauseBook
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
# before TimeLimit: a job held by a pause or the device's state is not yet running
pauses = PauseBook(parts.local_redis, parts.qpu_id)
device = DeviceWatch(parts.host.executor, pauses, settings.device_poll_interval_sec)
broker.add_middleware(HoldJobs(pauses, device), before=TimeLimit)
broker.add_middleware(
    MaintenanceWindows(
        settings.maintenance_windows,
        pauses,
        parts.host.executor,
        lambda: parts.host.processes.slots,
        concurrency=settings.executor_concurrency,
        command=settings.calibration_command,
        timeout_sec=settings.calibration_timeout_sec,
        resume_after_hook=settings.maintenance_resume == "hook_end",
    )
)
broker.add_middleware(stopping)
broker.add_middleware(Deregister(registration))
# after an outage, the deliveries waiting on their retry backoff go as soon as the cloud answers again
broker.add_middleware(PromptAfterOutage(parts.state.cloud_back_at, DELIVER_ACTOR, RESULTS_QUEUE))
broker.add_middleware(SystemdNotify())  # last: READY=1 once every other boot step is done
dramatiq.set_broker(broker)

__all__ = ["broker", "parts", "registration", "role", "settings", "stopping"]
