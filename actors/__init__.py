"""The dramatiq actors of coda-bridge, for the ``dramatiq`` CLI.

    dramatiq actors --queues jobs --processes 1 --threads 1
    dramatiq actors --queues results --processes 2 --threads 8
    dramatiq actors --queues control --threads 2

Importing this package loads the node's settings (waiting for the bridge
to provision the node if needed), builds the broker for this QPU, and
declares every actor.
"""

from __future__ import annotations

import logging
import threading

import dramatiq
from dramatiq.middleware import Middleware

from coda_bridge.broker.redis_broker import JOBS_QUEUE, create_broker
from coda_bridge.errors import CodaError
from coda_bridge.logs import configure_logging
from coda_bridge.runtime import Runtime, wait_for_identity


class ExecutorAtBoot(Middleware):
    """An executor worker builds its executor at boot: a bad factory shows at once, not at the first job."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        only = worker.consumer_whitelist
        if only and JOBS_QUEUE not in only:
            return
        try:
            runtime.executor()
        except CodaError as exc:
            logging.getLogger("actors").error("Executor unavailable: %s (jobs will fail until fixed)", exc)


class StoppingFlag(Middleware):
    """Set once this worker process begins to stop: jobs finishing in the drain deliver their own results.

    Under ``honcho start`` every process gets SIGTERM at once, so the
    results worker may already be gone when a drained job's result is queued.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.stopping.set()


stopping = StoppingFlag()
settings = wait_for_identity()
configure_logging(settings.log_level)
broker = create_broker(settings)
broker.add_middleware(ExecutorAtBoot())
broker.add_middleware(stopping)
dramatiq.set_broker(broker)
runtime = Runtime(settings)

from . import control, jobs, results  # noqa: E402  (actors need the broker set first)

__all__ = ["broker", "control", "jobs", "results", "runtime", "settings", "stopping"]
