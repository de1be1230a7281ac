"""``coda-bridge start``: the node's processes as one supervised group.

honcho's :class:`~honcho.manager.Manager` starts the processes and prints
their output with a coloured ``name |`` prefix.  Each process runs under
the respawn wrapper (:mod:`coda_bridge.ops.respawn`), which restarts it with
backoff when it dies.  Three things differ from plain ``honcho start``:

- the bridge starts first; the workers and the web app start once the
  node has an identity (at once when it is persisted or configured), so a
  refused token stops ``start`` at once instead of leaving workers waiting;
- a process that stops on its own does not stop the group (its wrapper
  already restarts it); only a wrapper that gives up (configuration error)
  does;
- the first SIGTERM or SIGINT drains in order: the bridge and the
  executor workers first (no new jobs, in-flight jobs finish), then, once
  their results are picked up for delivery, the delivery, control and web
  processes; the whole drain is bounded by ``shutdown_drain_timeout_sec``.
  A second signal kills every process at once (unfinished work is
  redelivered at the next start).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from honcho.manager import Manager
from honcho.printer import Printer

from ..broker.queues import RESULTS_QUEUE
from ..broker.redis_broker import broker_namespace
from ..errors import CodaError, ConfigError
from ..identity.connect import NO_CREDENTIALS, load_node_settings
from ..identity.credentials import StatePaths, connected_since, ensure_state_dir
from ..settings import Settings
from .daemon import claim_pid_file, detach
from .processes import ProcessSpec, node_processes
from .proctree import kill_tree, process_tree
from .respawn import respawn_argv

__all__ = ["DRAIN_FIRST", "ProcessGroup", "check_credentials", "child_env", "run_start", "start_detached"]

#: Stopped first on a drain: no new jobs come in, and jobs in flight finish.
DRAIN_FIRST = ("bridge", "jobs")
#: Time past the drain timeout before the group kills what is still running.
KILL_MARGIN_SEC = 10.0
#: How long the results queue must stay empty before the delivery workers are stopped.
FLUSH_SETTLE_SEC = 0.5
#: How often the group looks at its processes while waiting for events.
LOOP_POLL_SEC = 0.1
#: Socket timeout of the results-queue look-up during a drain.
FLUSH_CHECK_TIMEOUT_SEC = 1.0
#: How often the group looks whether the node has an identity yet (to start the deferred processes).
IDENTITY_POLL_SEC = 0.5


class ProcessGroup(Manager):
    """honcho's Manager with wrapped, restarting processes and an ordered, bounded drain."""

    def __init__(
        self,
        *,
        drain_timeout_sec: float,
        results_flushed: Callable[[], bool] | None = None,
        identity_ready: Callable[[], bool] | None = None,
        printer: Printer | None = None,
    ) -> None:
        super().__init__(printer)
        self.drain_timeout_sec = drain_timeout_sec
        self.results_flushed = results_flushed or (lambda: True)
        self.identity_ready = identity_ready or (lambda: True)
        self._deferred: list[str] = []
        self._identity_checked = 0.0
        self._stop_at: float | None = None
        self._forced = False
        self._fatal: int | None = None
        self._signalled: set[str] = set()
        self._empty_since: float | None = None
        self._second_stage = False

    def add(self, spec: ProcessSpec, env: Mapping[str, str], *, deferred: bool = False) -> None:
        """Run ``spec`` under the respawn wrapper (``exec``: the shell honcho uses steps aside).

        A ``deferred`` process starts once ``identity_ready()`` says the node has an identity.
        """
        command = "exec " + shlex.join(respawn_argv(spec.name, spec.argv))
        self.add_process(spec.name, command, env=dict(env))
        if deferred:
            self._deferred.append(spec.name)

    # -- starting --

    def _start_one(self, name: str) -> None:
        entry = self._processes[name]
        entry["process"] = multiprocessing.Process(name=name, target=_relay, args=(entry["obj"], self.events))
        entry["process"].start()

    def _start(self) -> None:
        for name in self._processes:
            if name not in self._deferred:
                self._start_one(name)

    def _start_deferred(self) -> None:
        """Start the deferred processes once the node has an identity; drop them when stopping first."""
        if not self._deferred:
            return
        if self._stop_at is not None:
            for name in self._deferred:
                del self._processes[name]
            self._system_print(f"not starting {', '.join(self._deferred)}\n")
            self._deferred = []
            return
        now = time.monotonic()
        if now - self._identity_checked < IDENTITY_POLL_SEC:
            return
        self._identity_checked = now
        try:
            ready = self.identity_ready()
        except Exception:  # an unreadable state file: the bridge will say so
            ready = False
        if ready:
            self._system_print(f"the node has an identity; starting {', '.join(self._deferred)}\n")
            for name in self._deferred:
                self._start_one(name)
            self._deferred = []

    # -- stopping --

    def _pid(self, name: str) -> int | None:
        pid = self._processes[name].get("pid")
        return int(pid) if pid is not None else None

    def _running(self, name: str) -> bool:
        return "returncode" not in self._processes[name]

    def _terminate(self, names: list[str]) -> None:
        """One SIGTERM to each named wrapper (its child gets exactly one, from the wrapper)."""
        for name in names:
            pid = self._pid(name)
            if name in self._signalled or not self._running(name) or pid is None:
                continue
            self._signalled.add(name)
            self._system_print(f"sending SIGTERM to {name} (pid {pid})\n")
            self._procmgr.terminate(pid)

    def request_stop(self, reason: str) -> None:
        """Begin the ordered drain (idempotent)."""
        if self._stop_at is not None:
            return
        self._stop_at = time.monotonic()
        self._system_print(f"{reason}; draining (up to {self.drain_timeout_sec:g} s)\n")
        self._terminate([name for name in self._processes if name in DRAIN_FIRST])

    def force(self, reason: str) -> None:
        """Kill every process now, wrappers and children alike."""
        if self._forced:
            return
        self._forced = True
        self._system_print(f"{reason}; killing every process now\n")
        trees = [process_tree(pid) for name in self._processes if (pid := self._pid(name)) is not None]
        for tree in trees:
            kill_tree(tree)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop_at is None:
            self.request_stop(f"{name} received")
        else:
            self.force(f"second signal ({name})")

    def _advance(self) -> None:
        """Move the drain along: second stage once the first is done and results are picked up."""
        if self._stop_at is None:
            return
        now = time.monotonic()
        deadline = self._stop_at + self.drain_timeout_sec
        if not self._second_stage:
            first_done = not any(self._running(n) for n in self._processes if n in DRAIN_FIRST)
            if (first_done and self._flushed(now)) or now > deadline:
                self._second_stage = True
                self._terminate(list(self._processes))
        else:
            # a wrapper that was not started yet when its stage came gets its signal now
            self._terminate(list(self._processes))
        if now > deadline + KILL_MARGIN_SEC:
            self.force(f"drain timeout of {self.drain_timeout_sec:g} s passed")

    def _flushed(self, now: float) -> bool:
        try:
            empty = self.results_flushed()
        except Exception:  # a broken check must never block the stop
            empty = True
        if not empty:
            self._empty_since = None
            return False
        if self._empty_since is None:
            self._empty_since = now
        return now - self._empty_since >= FLUSH_SETTLE_SEC

    # -- the loop --

    def _handle(self, msg: Any) -> None:
        if msg.type == "line":
            self._printer.write(msg)
        elif msg.type == "start":
            self._processes[msg.name]["pid"] = msg.data["pid"]
            self._system_print(f"{msg.name} started (pid={msg.data['pid']})\n")
        elif msg.type == "stop":
            returncode = msg.data["returncode"]
            self._processes[msg.name]["returncode"] = returncode
            self._system_print(f"{msg.name} stopped (rc={returncode})\n")
            if self._stop_at is None:
                self._fatal = returncode or 1
                self.request_stop(f"{msg.name} gave up")

    def loop(self) -> None:
        """Run the group until every process stopped; ``returncode`` is 0 after a clean drain."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._start()
        while True:
            with contextlib.suppress(queue.Empty):
                self._handle(self.events.get(timeout=LOOP_POLL_SEC))
            self._start_deferred()
            self._advance()
            if not self._deferred and self._all_started() and self._all_stopped():
                break
        codes = [p.get("returncode") or 0 for p in self._processes.values()]
        if self._fatal is not None:
            self.returncode = self._fatal
        elif self._forced:
            self.returncode = 1
        else:
            self.returncode = next((c for c in codes if c), 0)
        self._system_print(f"all processes stopped (rc={self.returncode})\n")


def _relay(process: Any, events: Any) -> None:
    """honcho's per-process relay (start the command, pass its lines on), deaf to signals.

    It is a fork of the group: it must never run the group's signal handler.
    Its command stops when the group tells it to, and the relay ends then.
    A Python-level no-op (not ``SIG_IGN``) is reset by ``exec``, so the
    command itself starts with the default dispositions.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _deaf)
    process.run(events, True)


def _deaf(signum: int, frame: FrameType | None) -> None:
    """A signal handler that does nothing."""


def check_credentials(settings: Settings, token: str | None) -> None:
    """Refuse to start what could never connect: no token, no persisted or configured identity."""
    if token:
        return
    if settings.has_identity:
        return
    raise ConfigError(NO_CREDENTIALS)


def child_env(*, host: str | None = None, port: int | None = None, site: str | None = None) -> dict[str, str]:
    """The environment of every process of the group: ours, with the CLI's overrides and no token."""
    env = {k: v for k, v in os.environ.items() if k != "CODA_NODE_TOKEN"}
    env["PYTHONUNBUFFERED"] = "1"
    if host:
        env["CODA_HOST"] = host
    if port:
        env["CODA_PORT"] = str(port)
    if site:
        env["CODA_ENV"] = site
    return env


class _IdentityReady:
    """Whether this start's bridge has connected, so the others load its bundle, not an older one."""

    def __init__(self, overrides: Mapping[str, Any], site: str | None) -> None:
        self.overrides = dict(overrides)
        self.site = site
        self.since = time.time()

    def __call__(self) -> bool:
        settings = load_node_settings(overrides=self.overrides, site=self.site)
        if not settings.has_identity:
            return False
        return connected_since(StatePaths(settings.state_dir), self.since)


class _ResultsQueueEmpty:
    """Whether no result waits for a delivery worker (read straight from the broker, short timeouts)."""

    def __init__(self, overrides: Mapping[str, Any], site: str | None) -> None:
        self.overrides = dict(overrides)
        self.site = site

    def __call__(self) -> bool:
        try:
            settings = load_node_settings(overrides=self.overrides, site=self.site)
        except CodaError:
            return True
        if not settings.qpu_id:
            return True
        client = redis.Redis.from_url(
            settings.broker_url,
            socket_timeout=FLUSH_CHECK_TIMEOUT_SEC,
            socket_connect_timeout=FLUSH_CHECK_TIMEOUT_SEC,
        )
        try:
            return int(client.llen(f"{broker_namespace(settings.qpu_id)}:{RESULTS_QUEUE}")) == 0
        except redis.RedisError:
            return True
        finally:
            client.close()


def run_start(
    *, token: str | None, host: str | None = None, port: int | None = None, site: str | None = None
) -> int:
    """Run the whole node in the foreground until it is stopped; the exit status."""
    overrides = {"host": host, "port": port}
    settings = load_node_settings(overrides=overrides, site=site)
    token = token or settings.node_token_value
    check_credentials(settings, token)
    paths = ensure_state_dir(settings.state_dir)
    env = child_env(host=host, port=port, site=site)
    group = ProcessGroup(
        drain_timeout_sec=settings.shutdown_drain_timeout_sec,
        results_flushed=_ResultsQueueEmpty(overrides, site),
        identity_ready=_IdentityReady(overrides, site),
    )
    for spec in node_processes(settings, web=True):
        if spec.name == "bridge":
            group.add(spec, {**env, "CODA_NODE_TOKEN": token} if token else env)
        else:
            group.add(spec, env, deferred=True)
    with claim_pid_file(paths.daemon_pid):
        group.loop()
    return int(group.returncode or 0)


def start_detached(
    *, token: str | None, host: str | None = None, port: int | None = None, site: str | None = None
) -> tuple[int, Path]:
    """Run ``coda-bridge start`` in the background; its pid and log file once it holds the pid file."""
    settings = load_node_settings(overrides={"host": host, "port": port}, site=site)
    token = token or settings.node_token_value
    check_credentials(settings, token)
    paths = ensure_state_dir(settings.state_dir)
    args = [*(["--host", host] if host else []), *(["--port", str(port)] if port else [])]
    args += ["--site", site] if site else []
    env = dict(os.environ)
    if token:
        env["CODA_NODE_TOKEN"] = token  # the environment, never the command line
    return detach(args, env, paths), paths.daemon_log
