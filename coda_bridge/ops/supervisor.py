"""``coda-bridge start``: the node's processes as one supervised group, in this one process.

The supervisor starts every process itself (no honcho fork, no wrapper per
process), prints their output with a coloured ``name |`` prefix (honcho's
printer), and:

- imports once what all of them import, then forks each from itself
  (:mod:`~coda_bridge.ops.forking`): a process starts without importing
  its libraries again, and those pages stay shared between them all;

- starts the bridge first; on a first start (no identity yet) the others
  start once this start's bridge has connected, so a refused token stops
  ``start`` at once; on a later start what the first ``/ready`` needs
  (control worker, probes app) starts with the bridge, imports what it
  needs and waits for this start's connect itself, so it loads the fresh
  bundle (:mod:`~coda_bridge.ops.runners`, :mod:`~coda_bridge.ops.webentry`);
  the executor and delivery workers start once the bridge connected;
- restarts a process that dies with backoff (1 s, 2 s, 4 s ... up to 30 s,
  back to 1 s after a run of a minute), except one that exits with
  :data:`~coda_bridge.ops.exits.EX_CONFIG` (it cannot work as
  configured): then the whole group stops, and ``start`` exits 78;
- runs each process in a process group of its own and sends it exactly
  one SIGTERM on a stop;
- drains in order on the first SIGTERM or SIGINT: the bridge and the
  executor workers first (no new jobs, in-flight jobs finish), then, once
  their results are picked up for delivery, the delivery, control and web
  processes; the whole drain is bounded by ``shutdown_drain_timeout_sec``.
  A second signal kills every process at once (unfinished work is
  redelivered at the next start).

``start --one-process`` (:mod:`~coda_bridge.ops.oneprocess`) runs the same
parts in threads of one process instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..identity.credentials import StatePaths, connected_since, ensure_state_dir, token_was_used
from ..logs import LOG_FORMAT_VARIABLE
from ..trust import SAFE_PATH_ENV, python_argv
from .drain import ResultsFlushed, results_key_template
from .forking import preload
from .group import READY_PATH, WEB_WORKERS, ProcessGroup
from .jsonlines import json_line
from .outcome import UNEXPLAINED, record_exit, record_start
from .output_relay import SYSTEM_NAME
from .pidfile import claim_pid_file, pid_file_for, release_pid_file
from .process_list import ProcessSpec, start_processes

if TYPE_CHECKING:  # the group's interpreter preloads only what its processes share (see run_start)
    from ..settings import Settings

__all__ = ["check_credentials", "child_env", "run_start", "start_detached"]


def check_credentials(settings: Settings, token: str | None) -> None:
    """Refuse to start what could never connect: no token, no persisted or configured identity."""
    if token:
        return
    if settings.has_identity:
        return
    from ..identity.connect import NO_CREDENTIALS  # noqa: PLC0415 - the exec'd group imports only what its processes share

    raise ConfigError(NO_CREDENTIALS)


def child_env(*, host: str | None = None, port: int | None = None, site: str | None = None) -> dict[str, str]:
    """The environment of every process of the group: ours, with the CLI's overrides and no token."""
    env = {k: v for k, v in os.environ.items() if k != "CODA_NODE_TOKEN"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(SAFE_PATH_ENV)  # no process imports from the working directory
    if host:
        env["CODA_HOST"] = host
    if port:
        env["CODA_PORT"] = str(port)
    if site:
        env["CODA_ENV"] = site
    return env


class _IdentityReady:
    """Whether this start's bridge has connected, so the others load its bundle, not an older one."""

    def __init__(self, state_dir: Path, since: float) -> None:
        self.paths = StatePaths(state_dir)
        self.since = since

    def __call__(self) -> bool:
        return connected_since(self.paths, self.since)


def run_start(
    settings: Settings,
    *,
    token: str | None,
    host: str | None = None,
    port: int | None = None,
    site: str | None = None,
    one_process: bool = False,
) -> int:
    """Run the whole node in the foreground until it is stopped; the exit status.

    ``settings`` are the command's (loaded and checked once, with ``host``,
    ``port`` and ``site``); the group itself then runs in this same process
    (same pid, so the pid file stays right) after an ``exec`` of a fresh
    interpreter that imports only what its processes share (:func:`main`),
    nothing of this command's.
    """
    token = token or settings.node_token_value
    check_credentials(settings, token)
    paths = ensure_state_dir(settings.state_dir)
    if token and settings.has_identity and token_was_used(paths, token):
        token = None  # spent at an earlier start: no process of this one gets a copy
    pid_file = pid_file_for(paths.root)
    if one_process:
        from .oneprocess import run_one_process  # noqa: PLC0415 - the exec'd group imports only what its processes share

        with claim_pid_file(pid_file) as pid:
            record_start(paths.root, pid)
            code: Any = 1
            try:
                code = run_one_process(settings, token=token, host=host, port=port, site=site)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                raise
            finally:
                reason = "stopped" if code == 0 else f"exited with code {code} {UNEXPLAINED}"
                record_exit(paths.root, pid, code, reason)
            return int(code)
    env = child_env(host=host, port=port, site=site)
    env.setdefault(LOG_FORMAT_VARIABLE, settings.log_format)  # a settings file's choice reaches every part
    since = time.time()
    # a later start: what /ready needs starts with the bridge and waits for its connect itself
    early = settings.has_identity
    members = []
    for spec in start_processes(settings, since=since):
        member_env = _web_env(settings, env) if spec.name == "web" else env
        if spec.name == "bridge" and token:
            member_env = {**env, "CODA_NODE_TOKEN": token}
        deferred = spec.name != "bridge" and (not early or spec.name not in READY_PATH)
        members.append(
            {
                "name": spec.name,
                "argv": list(spec.argv),
                "entry": spec.entry,
                "env": member_env,
                "deferred": deferred,
            }
        )
    plan = {
        "drain_timeout_sec": settings.shutdown_drain_timeout_sec,
        "since": since,
        "state_dir": str(paths.root),
        "pid_file": str(pid_file),
        "broker_url": settings.broker_url,
        "results_key": results_key_template(),
        "qpu_id": settings.qpu_id,
        "log_format": settings.log_format,
        "members": members,
    }
    with claim_pid_file(pid_file) as pid:
        record_start(paths.root, pid)
        _exec_group(plan, paths, env)
    return 1  # not reached: exec replaced this process


def _exec_group(plan: Mapping[str, Any], paths: StatePaths, env: Mapping[str, str]) -> None:
    """Hand the plan to a fresh interpreter in this process: a 0600 file (the bridge's env holds a token).

    It runs in the environment its processes share (no token), so what it
    preloads for them is imported as they would import it.
    """
    plan_path = paths.root / f"start-plan-{os.getpid()}.json"
    plan_path.unlink(missing_ok=True)
    fd = os.open(plan_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(plan, handle)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        argv = python_argv(sys.executable, "-m", "coda_bridge.ops.supervisor", str(plan_path))
        os.execve(sys.executable, argv, env)  # -P: the parts it forks share its import path
    finally:  # only when exec failed
        plan_path.unlink(missing_ok=True)


def main(args: list[str] | None = None) -> int:
    """``python -m coda_bridge.ops.supervisor PLAN``: run the group ``run_start`` planned; its status."""
    plan_path = Path((sys.argv[1:] if args is None else args)[0])
    try:
        plan = json.loads(plan_path.read_text())
    finally:
        plan_path.unlink(missing_ok=True)
    state_dir = Path(plan["state_dir"])
    json_lines = plan.get("log_format") == "json"
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # ignored by whoever started us, children reap themselves
    group = ProcessGroup(
        drain_timeout_sec=plan["drain_timeout_sec"],
        results_flushed=ResultsFlushed(
            plan["results_key"], plan["qpu_id"], broker_url=plan["broker_url"], state_dir=state_dir
        ),
        identity_ready=_IdentityReady(state_dir, plan["since"]),
        spent_env=("CODA_NODE_TOKEN",),
        fork=_preloaded(json_lines),
        json_lines=json_lines,
    )
    _add_members(group, plan.pop("members"))
    pid_file = Path(plan["pid_file"])
    del plan  # the group holds the one copy of each environment (and drops a spent token)
    try:
        group.loop()
    finally:
        code = int(group.returncode if group.returncode is not None else 1)
        record_exit(state_dir, os.getpid(), code, group.reason or "every process of the node exited")
        release_pid_file(pid_file, os.getpid())
    return int(group.returncode or 0)


def _add_members(group: ProcessGroup, members: list[dict[str, Any]]) -> None:
    for member in members:
        group.add(
            ProcessSpec(member["name"], tuple(member["argv"]), member.get("entry")),
            member["env"],
            deferred=member["deferred"],
        )


def _preloaded(json_lines: bool = False) -> bool:
    """Preload what the processes share; False (each starts its own interpreter) if that failed."""
    try:
        preload()
    except Exception as exc:  # a broken install: the processes will say what is wrong themselves
        said = f"cannot preload ({type(exc).__name__}: {exc}); each process imports anew"
        line = json_line(SYSTEM_NAME, said, system=True) if json_lines else f"{SYSTEM_NAME} | {said}"
        print(line, flush=True)
        return False
    return True


def _web_env(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """The probes app's environment: one gunicorn worker (with threads) unless the operator chose."""
    web = dict(env)
    if "web_workers" not in settings.model_fields_set:
        web["CODA_WEB_WORKERS"] = str(WEB_WORKERS)
    return web


def start_detached(
    settings: Settings,
    *,
    token: str | None,
    host: str | None = None,
    port: int | None = None,
    site: str | None = None,
    one_process: bool = False,
) -> tuple[int, Path]:
    """Run ``coda-bridge start`` in the background; its pid and log file once the node is ready.

    ``settings`` are the command's (loaded once, with ``host``, ``port`` and ``site``).
    Raises :class:`~coda_bridge.ops.daemon.StartFailed` (its exit code, and why in one line)
    when it stops first or is not ready within ``start_timeout_sec``.
    """
    from .daemon import Launch, detach, ready_url  # noqa: PLC0415 - the exec'd group imports only what its processes share

    token = token or settings.node_token_value
    check_credentials(settings, token)
    paths = ensure_state_dir(settings.state_dir)
    args = [*(["--host", host] if host else []), *(["--port", str(port)] if port else [])]
    args += ["--site", site] if site else []
    args += ["--one-process"] if one_process else []
    env = dict(os.environ)
    if token:
        env["CODA_NODE_TOKEN"] = token  # the environment, never the command line
    launch = Launch(
        state_dir=paths.root,
        log=paths.daemon_log,
        pid_file=pid_file_for(paths.root),
        ready_url=ready_url(settings.host, settings.port),
        timeout_sec=settings.start_timeout_sec,
        drain_timeout_sec=settings.shutdown_drain_timeout_sec,
    )
    return detach(args, env, launch), paths.daemon_log


if __name__ == "__main__":
    sys.exit(main())
