"""A whole node on one machine, for the demo, the benchmarks and the end-to-end tests.

:class:`LocalStack` starts two private Redis servers (the cloud's and the
local broker), the local cloud simulator, registers a QPU, and runs the
node's processes as real subprocesses with their logs in a work directory:
the Procfile's lines (``mode="procfile"``, each process can be killed,
restarted and signalled on its own; given ``procfile``, that file's own
command lines, as ``honcho start`` runs them), ``coda-bridge start``
(``mode="start"``: its supervisor restarts a part that was killed), or
``coda-bridge start --one-process`` (``mode="one-process"``: one process
named ``node``, killed and started again like a Procfile line).  :meth:`LocalStack.stop`
lets the node drain; leaving a ``with LocalStack(...)`` block kills it, as the
stack it ran on is thrown away.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from ..errors import CodaError
from ..ops.process_list import ProcessSpec, node_processes
from ..ops.proctree import alive, descendants, process_tree
from ..settings import load_settings
from .devcloud.admin_client import DevCloudClient
from .devcloud.launcher import DevCloudProcess, start_devcloud_process
from .localredis import LocalRedis, free_port
from .stack_child import StackChild

__all__ = ["MODES", "START_PARTS", "LocalStack", "procfile_specs", "wait_until"]

#: How often waits look again.
POLL_SEC = 0.05
#: How long ``start``'s supervisor may take to start a part again (its backoff grows to 30 s).
RESTART_WAIT_SEC = 40.0
#: How a stack runs the node: the Procfile's lines, ``coda-bridge start``, or ``start --one-process``.
MODES = ("procfile", "start", "one-process")
#: What ``start --one-process`` logs once every part of it runs.
ONE_PROCESS_READY = b"coda-bridge running in one process"
#: What names each part of ``coda-bridge start`` in its command line (``ps``).
START_PARTS = {
    "bridge": "coda_bridge.ops.runners bridge",
    "jobs": "--queues jobs ",
    "results": "--queues results ",
    "control": "--queues control ",
    "web": "gunicorn",
}


def procfile_specs(procfile: Path, python: str = sys.executable) -> dict[str, ProcessSpec]:
    """A Procfile's lines as written, but its ``redis`` line (a stack runs its own broker).

    Each command is looked up first beside ``python`` (the virtualenv's
    ``coda-bridge`` and ``dramatiq``), as ``honcho start`` in that
    virtualenv finds them on its ``PATH``.
    """
    path = os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", os.defpath)])
    specs = {}
    for line in procfile.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        if name.strip() == "redis":
            continue
        argv = shlex.split(command)
        argv[0] = shutil.which(argv[0], path=path) or argv[0]
        specs[name.strip()] = ProcessSpec(name.strip(), tuple(argv))
    return specs


def wait_until(condition: Callable[[], Any], timeout_sec: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_sec
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_sec:g} s waiting for {what}")
        time.sleep(POLL_SEC)


class LocalStack:
    """Cloud Redis, broker Redis, the cloud simulator and a provisioned node, all local."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        qpu_id: str = "qpu-local",
        num_qubits: int = 5,
        native_gate_set: str = "cz",
        env: Mapping[str, str] | None = None,
        web: bool = False,
        mode: str = "procfile",
        procfile: Path | None = None,
        required_headers: Mapping[str, str] | None = None,
        devcloud_args: Sequence[str] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="coda-stack-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.qpu_id = qpu_id
        self.num_qubits = num_qubits
        self.native_gate_set = native_gate_set
        self.extra_env = dict(env or {})
        self.devcloud_args = list(devcloud_args)
        self.web = web
        self.mode = mode
        #: In procfile mode, the Procfile whose lines run (by default the lines ``node_processes`` builds).
        self.procfile = procfile
        #: Headers the simulator's node API demands (a protected staging cloud); none by default.
        self.required_headers = dict(required_headers or {})
        self._killed: dict[str, int] = {}  # in start mode: the pid of the part killed last
        self.web_port = free_port()
        self.cloud_redis = LocalRedis()
        self.broker_redis = LocalRedis()
        self.devcloud: DevCloudProcess | None = None
        self.children: dict[str, StackChild] = {}
        self._restarts: dict[str, int] = {}

    # -- the fixed parts --

    def start(self, *, processes: bool = True) -> LocalStack:
        """Start Redis twice, the simulator, register the QPU, and (by default) the node's processes.

        If any step fails, whatever already started is stopped before the error goes on.
        """
        try:
            self._start(processes)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, processes: bool) -> None:
        self.cloud_redis.start()
        self.broker_redis.start()
        self.devcloud = start_devcloud_process(
            redis_url=self.cloud_redis.url,
            log_path=self.workdir / "devcloud.log",
            required_headers=self.required_headers,
            extra_args=self.devcloud_args,
        )
        self.cloud.create_qpu(
            self.qpu_id,
            display_name=f"Local {self.qpu_id}",
            native_gate_set=self.native_gate_set,
            num_qubits=self.num_qubits,
            connection_mode="https",
            redis_url=self.cloud_redis.url,
        )
        if processes:
            self.start_node()

    @property
    def cloud(self) -> DevCloudClient:
        assert self.devcloud is not None, "stack not started"
        return self.devcloud.client()

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def env(self) -> dict[str, str]:
        """The environment of every node process."""
        assert self.devcloud is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
        env.update(
            {
                "CODA_STATE_DIR": str(self.state_dir),
                "CODA_WEBAPP_URL": self.devcloud.base_url,
                "CODA_BROKER_URL": self.broker_redis.url,
                "CODA_VPN_REQUIRED": "false",
                "CODA_PORT": str(self.web_port),
                "CODA_HOST": "127.0.0.1",
                "CODA_SETTINGS_FILES": str(self.workdir / "settings.toml"),
                "CODA_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def command(self, *args: str, timeout_sec: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run one ``coda-bridge`` command against this node (its environment), output captured."""
        return subprocess.run(
            [sys.executable, "-m", "coda_bridge", *args],
            check=False,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_sec,
        )

    # -- the node's processes --

    def specs(self) -> dict[str, ProcessSpec]:
        """The node's command lines in this stack's mode, built from the stack's own settings."""
        if self.mode == "one-process":
            return {
                "node": ProcessSpec("node", (sys.executable, "-m", "coda_bridge", "start", "--one-process"))
            }
        if self.mode == "procfile" and self.procfile is not None:
            specs = procfile_specs(self.procfile)
            return specs if self.web else {name: spec for name, spec in specs.items() if name != "web"}
        # the settings the command lines carry, as this stack's environment sets them (not this process's)
        shaping = {"executor_concurrency": "1", "result_processes": None, "shutdown_drain_timeout_sec": None}
        overrides = {
            name: self.extra_env.get(f"CODA_{name.upper()}", default) for name, default in shaping.items()
        }
        settings = load_settings(overrides=overrides)
        return {s.name: s for s in node_processes(settings, web=self.web, python=sys.executable)}

    def start_node(self) -> None:
        """Provision with a fresh token through the bridge, then start the workers (and web)."""
        self.extra_env["CODA_NODE_TOKEN"] = self.cloud.mint_token(self.qpu_id)
        if self.mode == "start":
            self._start_supervised()
            return
        if self.mode == "one-process":
            self.start_process("node")
            log = self.workdir / "node.log"
            wait_until(
                lambda: ONE_PROCESS_READY in log.read_bytes() or not self.children["node"].alive(),
                60,
                "coda-bridge start --one-process to run",
            )
            if not self.children["node"].alive():
                raise CodaError(f"coda-bridge start --one-process exited:\n{self.log_tail('node')}")
            return
        specs = self.specs()
        self.start_process("bridge", specs["bridge"])
        wait_until(
            lambda: (self.state_dir / "coda.config").exists() or not self.children["bridge"].alive(),
            30,
            "the bridge to provision the node",
        )
        if not self.children["bridge"].alive():
            raise CodaError(f"bridge exited at start:\n{self.log_tail('bridge')}")
        for name, spec in specs.items():
            if name != "bridge":
                self.start_process(name, spec)

    def start_process(
        self, name: str, spec: ProcessSpec | None = None, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start (or restart) one named process; its output goes to ``<workdir>/<name>.log``.

        ``env`` adds variables for this start only (a failpoint, say).
        """
        if self.mode == "start":  # its supervisor starts it again
            killed = self._killed.get(name)
            wait_until(
                lambda: (pid := self.part_pid(name)) is not None and pid != killed,
                RESTART_WAIT_SEC,
                f"coda-bridge start to start {name} again",
            )
            return
        spec = spec or self.specs()[name.split("#", maxsplit=1)[0]]
        old = self.children.get(name)
        if old is not None and old.alive():
            raise CodaError(f"{name} is already running (pid {old.pid})")
        self._restarts[name] = self._restarts.get(name, -1) + 1
        self.children[name] = StackChild(spec, {**self.env(), **(env or {})}, self.workdir / f"{name}.log")

    # -- ``coda-bridge start``: one supervisor, its parts found by their command lines --

    def _start_supervised(self) -> None:
        spec = ProcessSpec("start", (sys.executable, "-m", "coda_bridge", "start"))
        self.children["start"] = StackChild(spec, self.env(), self.workdir / "start.log")
        wait_until(
            lambda: all(self.part_pid(name) for name in START_PARTS) or not self.children["start"].alive(),
            60,
            "every part of coda-bridge start",
        )
        if not self.children["start"].alive():
            raise CodaError(f"coda-bridge start exited:\n{self.log_tail('start')}")

    def part_pid(self, name: str) -> int | None:
        """In start mode, the pid of the part ``name`` (bridge, jobs, results, control, web), if it runs."""
        supervisor = self.children.get("start")
        if supervisor is None or not supervisor.alive():
            return None
        needle = START_PARTS[name]
        with contextlib.suppress(psutil.Error):
            for part in psutil.Process(supervisor.pid).children():
                with contextlib.suppress(psutil.Error):
                    if needle in " ".join(part.cmdline()) and alive(part.pid):
                        return part.pid
        return None

    def running(self, name: str) -> bool:
        """Whether the process ``name`` runs (in start mode: a part the supervisor runs)."""
        if self.mode == "start":
            return self.part_pid(name) is not None
        child = self.children.get(name)
        return child is not None and child.alive()

    def restart(self, name: str) -> None:
        self.children[name].stop()
        self.start_process(name)

    def kill9(self, name: str) -> None:
        """SIGKILL a process and everything in its process group (a dramatiq master and its workers)."""
        if self.mode == "start":
            pid = self.part_pid(name)
            if pid is None:
                raise CodaError(f"{name} is not running under coda-bridge start")
            for member in process_tree(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGKILL)
            self._killed[name] = pid
            wait_until(lambda: not alive(pid), 10, f"{name} (pid {pid}) to be gone")
            return
        child = self.children[name]
        child.kill_group()
        child.process.wait()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / ("start.log" if self.mode == "start" else f"{name}.log")
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_node(self) -> None:
        """SIGTERM every node process at once (each drains on its own), then wait for each."""
        children = list(self.children.values())
        families = {id(child): descendants(child.pid) for child in children}
        for child in children:
            child.signal(signal.SIGTERM)
        for child in children:
            child.stop(family=families[id(child)])

    def kill_node(self) -> None:
        """SIGKILL every node process and its descendants: no drain (nothing of the stack outlives it)."""
        for child in self.children.values():
            child.kill()

    def stop(self, *, drain: bool = True) -> None:
        """Stop everything this stack started, newest first.

        ``drain=False`` kills the node's processes instead of letting each drain on SIGTERM (seconds
        each: a dramatiq worker finishes its polls first): the stack's Redis servers and simulator stop
        right after, so a drain would keep nothing.
        """
        if drain:
            self.stop_node()
        else:
            self.kill_node()
        if self.devcloud is not None:
            self.devcloud.stop()
            self.devcloud = None
        self.broker_redis.stop()
        self.cloud_redis.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """The end of a ``with`` block throws the whole stack away: its node is killed, not drained."""
        self.stop(drain=False)
