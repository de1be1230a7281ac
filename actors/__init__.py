"""The dramatiq actors of coda-bridge, for the ``dramatiq`` CLI.

    dramatiq actors --queues jobs --processes 1 --threads 1
    dramatiq actors --queues results --threads 8
    dramatiq actors --queues control --threads 2

Importing this package loads the node's settings (waiting for the bridge
to provision the node if needed), builds the broker for this QPU, and
declares every actor.
"""

from __future__ import annotations

import dramatiq

from coda_bridge.broker import create_broker
from coda_bridge.logs import configure_logging
from coda_bridge.runtime import Runtime, wait_for_identity

settings = wait_for_identity()
configure_logging(settings.log_level)
broker = create_broker(settings)
dramatiq.set_broker(broker)
runtime = Runtime(settings)

from . import control, jobs, results  # noqa: E402  (actors need the broker set first)

__all__ = ["broker", "control", "jobs", "results", "runtime", "settings"]
