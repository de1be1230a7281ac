"""The dramatiq actors of coda-bridge, for the ``dramatiq`` CLI.

    dramatiq actors --queues jobs --processes 1 --threads 2
    dramatiq actors --queues results --processes 2 --threads 8
    dramatiq actors --queues control --threads 2

Importing this package declares every actor on :data:`broker` and does
nothing else: no settings, no connection, no registration.  At process boot
(dramatiq's ``after_process_boot``, or :func:`boot` from the node's own
runners) the worker waits for the identity its role needs (the bridge
provisions it), then the node's parts, the broker's connection and
middleware are built (:mod:`actors.shared`).  Each actor calls one step of
:mod:`coda_bridge.pipeline` or :mod:`coda_bridge.control`.
"""

from __future__ import annotations

from coda_bridge.lean_imports import import_dynaconf_without_flask

# The ``dramatiq`` CLI's worker processes (the Procfile's lines) enter here: as under ``start``, they
# load dynaconf without the Flask it would import for its Flask extension (less CPU and memory each).
import_dynaconf_without_flask()

from . import control, jobs, results  # noqa: E402 - after dynaconf is loaded without Flask
from .shared import Node, NodeBoot, boot, broker, node  # noqa: E402

__all__ = ["Node", "NodeBoot", "boot", "broker", "control", "jobs", "node", "results"]
