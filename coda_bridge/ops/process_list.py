"""The node's processes, named once: used by ``start``, the Procfile check, the demo and the tests.

Every process is a plain command line, so honcho, systemd or Kubernetes
can run the same thing.  Executor workers scale by running more of the
``jobs`` line; the bridge never changes.

:func:`node_processes` are the Procfile's lines (the ``dramatiq`` command:
a master and its worker processes).  :func:`start_processes` are what
``coda-bridge start`` supervises itself: the same parts, each one process
(:mod:`coda_bridge.ops.runners` runs dramatiq's Worker without a master).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..trust import python_argv
from .runners import worker_argv
from .webentry import web_argv

if TYPE_CHECKING:  # the supervisor imports this module and stays light (no settings stack)
    from ..settings import Settings

__all__ = [
    "CONTROL_THREADS",
    "PREPARED_AHEAD",
    "RESULT_THREADS",
    "ProcessSpec",
    "node_processes",
    "start_processes",
]

#: Delivery threads per process: webhooks wait on the network, not the CPU.
RESULT_THREADS = 8
#: Jobs threads beyond the run slots (``executor_concurrency``): each holds the device's next job
#: claimed and checked, so it starts the moment a run ends (issue 24; pipeline/execute.py).
PREPARED_AHEAD = 2
#: Control threads: a heartbeat and a VPN check may overlap.
CONTROL_THREADS = 2
#: How long the dramatiq master waits for each worker process to finish booting before it
#: watches them all (dramatiq's 30 s default would hide a worker that died while booting).
WORKER_FORK_TIMEOUT_MS = 1000
#: dramatiq's ``--path`` with no folder: it puts none on the import path (its default, ``.``, is the
#: working directory, where an ``actors.py`` would shadow the node's actors).
NO_IMPORT_PATH = "--path"


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the node: a name, its command line, and (for ``start``) the function that runs it.

    ``entry`` (``module:function``) runs the command line in a process
    forked from ``start``'s supervisor, with ``sys.argv`` set to the command
    line after ``python -m`` (:mod:`~coda_bridge.ops.forking`).
    """

    name: str
    argv: tuple[str, ...]
    entry: str | None = None

    @property
    def command(self) -> str:
        return " ".join(self.argv)


def _worker(queue: str, threads: int, drain_ms: int, python: str, processes: int = 1) -> tuple[str, ...]:
    return python_argv(
        python, "-m", "dramatiq", "actors",
        "--processes", str(processes),
        "--threads", str(threads),
        "--queues", queue,
        "--worker-shutdown-timeout", str(drain_ms),
        "--worker-fork-timeout", str(WORKER_FORK_TIMEOUT_MS),
        NO_IMPORT_PATH,
    )  # fmt: skip


def node_processes(settings: Settings, *, web: bool = True, python: str | None = None) -> list[ProcessSpec]:
    """bridge, jobs, results and control workers, and (unless ``web`` is false) the probes app."""
    py = python or sys.executable
    drain_ms = int(settings.shutdown_drain_timeout_sec * 1000)
    bridge = python_argv(py, "-m", "coda_bridge", "bridge")  # a token comes in CODA_NODE_TOKEN, never argv
    specs = [
        ProcessSpec("bridge", bridge),
        ProcessSpec("jobs", _worker("jobs", settings.executor_concurrency + PREPARED_AHEAD, drain_ms, py)),
        ProcessSpec("results", _worker("results", RESULT_THREADS, drain_ms, py, settings.result_processes)),
        ProcessSpec("control", _worker("control", CONTROL_THREADS, drain_ms, py)),
    ]
    if web:
        specs.append(ProcessSpec("web", python_argv(py, "-m", "coda_bridge", "web")))
    return specs


def start_processes(
    settings: Settings, *, since: float | None = None, python: str | None = None
) -> list[ProcessSpec]:
    """What ``start`` supervises: bridge, a process per queue, probes app.

    Deliveries run in ``result_processes`` processes (``results.1``,
    ``results.2`` ..., as honcho names a Procfile line run more than once).
    With ``since``, each worker and the probes app wait for a connect at or
    after it before they load the node's settings (they import what they
    need meanwhile).
    """
    py = python or sys.executable
    drain_ms = int(settings.shutdown_drain_timeout_sec * 1000)

    def worker(queue: str, threads: int, consumers: int = 1) -> tuple[str, ...]:
        return worker_argv(queue, threads, consumers=consumers, drain_ms=drain_ms, since=since, python=py)

    runner = "coda_bridge.ops.runners:main"
    bridge = python_argv(py, "-m", "coda_bridge.ops.runners", "bridge")  # a token in the environment
    results = [
        ProcessSpec(f"results.{index}", worker("results", RESULT_THREADS), runner)
        for index in range(1, settings.result_processes + 1)
    ]
    return [
        ProcessSpec("bridge", bridge, runner),
        ProcessSpec("jobs", worker("jobs", settings.executor_concurrency + PREPARED_AHEAD), runner),
        *results,
        ProcessSpec("control", worker("control", CONTROL_THREADS), runner),
        _web(settings, since, py),
    ]


def _web(settings: Settings, since: float | None, python: str) -> ProcessSpec:
    """gunicorn on the probes app, built after the connect; ``coda-bridge web`` (it checks the
    dashboard's credentials first) when the dashboard is on."""
    if settings.dashboard_enabled:
        argv = python_argv(python, "-m", "coda_bridge", "web")
        return ProcessSpec("web", argv, "coda_bridge.cli.main:main")
    return ProcessSpec("web", web_argv(since, python), "coda_bridge.web.gunicorn_app:main")
