"""The node's processes, named once: used by ``start``, the Procfile check, the demo and the tests.

Every process is a plain command line, so honcho, systemd or Kubernetes
can run the same thing.  Executor workers scale by running more of the
``jobs`` line; the bridge never changes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..settings import Settings

__all__ = ["CONTROL_THREADS", "RESULT_PROCESSES", "RESULT_THREADS", "ProcessSpec", "node_processes"]

#: Delivery worker processes: each has one dramatiq consumer thread (fetches and acks), which
#: bounds one process near 300 deliveries/s; two let a burst go twice as wide.
RESULT_PROCESSES = 2
#: Delivery threads per process: webhooks wait on the network, not the CPU.
RESULT_THREADS = 8
#: Control threads: a heartbeat and a VPN check may overlap.
CONTROL_THREADS = 2
#: How long the dramatiq master waits for each worker process to finish booting before it
#: watches them all (dramatiq's 30 s default would hide a worker that died while booting).
WORKER_FORK_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the node: a name and its command line."""

    name: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return " ".join(self.argv)


def _worker(queue: str, threads: int, drain_ms: int, python: str, processes: int = 1) -> tuple[str, ...]:
    return (
        python, "-m", "dramatiq", "actors",
        "--processes", str(processes),
        "--threads", str(threads),
        "--queues", queue,
        "--worker-shutdown-timeout", str(drain_ms),
        "--worker-fork-timeout", str(WORKER_FORK_TIMEOUT_MS),
    )  # fmt: skip


def node_processes(settings: Settings, *, web: bool = True, python: str | None = None) -> list[ProcessSpec]:
    """bridge, jobs, results and control workers, and (unless ``web`` is false) the probes app."""
    py = python or sys.executable
    drain_ms = int(settings.shutdown_drain_timeout_sec * 1000)
    bridge = (py, "-m", "coda_bridge", "bridge")  # a token reaches it through CODA_NODE_TOKEN, never argv
    specs = [
        ProcessSpec("bridge", bridge),
        ProcessSpec("jobs", _worker("jobs", settings.executor_concurrency, drain_ms, py)),
        ProcessSpec("results", _worker("results", RESULT_THREADS, drain_ms, py, RESULT_PROCESSES)),
        ProcessSpec("control", _worker("control", CONTROL_THREADS, drain_ms, py)),
    ]
    if web:
        specs.append(ProcessSpec("web", (py, "-m", "coda_bridge", "web")))
    return specs
