"""The dramatiq actors of coda-bridge, for the ``dramatiq`` CLI.

    dramatiq actors --queues jobs --processes 1 --threads 2
    dramatiq actors --queues results --processes 2 --threads 8
    dramatiq actors --queues control --threads 2

Importing this package loads the node's settings (waiting for the bridge
to provision the node if needed), builds the broker for this QPU and the
process's parts, and declares every actor.  The actors hold no logic:
each calls one step of :mod:`coda_bridge.pipeline` or :mod:`coda_bridge.control`.
"""

from __future__ import annotations

from . import control, jobs, results
from .node import broker, parts, settings, stopping

__all__ = ["broker", "control", "jobs", "parts", "results", "settings", "stopping"]
