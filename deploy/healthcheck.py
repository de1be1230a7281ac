#!/usr/bin/env python3
"""Health of the coda-bridge process this container runs: exit 0 when healthy, 1 (with a reason) when not.

The image's HEALTHCHECK and the Kubernetes exec probes of the bridge and
worker pods run it.  It reads /proc, and /health for the processes that
serve it; never Redis or the settings, so a slow broker or cloud never
restarts a healthy process (that is /ready's business, not liveness'):

- a dramatiq master (``coda-bridge worker <queue>`` execs it): at least one
  of its worker processes is alive (not a zombie, not stopped);
- ``coda-bridge start`` or the probes app (gunicorn): ``/health`` on
  ``127.0.0.1:$CODA_PORT`` answers 200;
- anything else (``coda-bridge bridge``): the process runs and is not stopped.

An executor busy for an hour in a call that holds the GIL is healthy: the
worker process is alive, and nothing here waits on it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

#: How long /health may take before the check fails.
HEALTH_TIMEOUT_SEC = 2.0
#: Init processes that may run as PID 1 in front of the real one (podman --init, docker --init, tini).
INITS = {"catatonit", "tini", "docker-init", "dumb-init"}
#: Process states of /proc/<pid>/stat that are not alive: zombie, dead, stopped, traced.
NOT_ALIVE = {"Z", "X", "x", "T", "t"}


def _stat(pid: int) -> tuple[str, int]:
    """State letter and parent pid of ``pid`` (the fields after the command, which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


#: The probes' gunicorn as `coda-bridge web` runs it (before gunicorn names its processes).
GUNICORN_APP = "coda_bridge.web.gunicorn_app"


def _argv(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _runs(argv: list[str], program: str) -> bool:
    """``program`` is the command: ``program ...``, ``python [-P] -m program ...``, ``python .../program``."""
    words = [part for part in argv[:4] if not part.startswith("-")][:2]
    return any(Path(part).name == program for part in words)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _stat(int(entry.name))[1] == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):  # gone meanwhile
                continue
    return found


def _main_process() -> int:
    """PID 1, or its first child when PID 1 is an init."""
    if Path(_argv(1)[0]).name in INITS:
        children = _children(1)
        if not children:
            raise RuntimeError("the init has no child: the node process is gone")
        return min(children)
    return 1


def _alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] not in NOT_ALIVE
    except (OSError, ValueError):
        return False


def check() -> str:
    """What was found healthy; :class:`RuntimeError` saying what is not."""
    pid = _main_process()
    argv = _argv(pid)
    if not _alive(pid):
        raise RuntimeError(f"process {pid} is not running")
    if _runs(argv, "dramatiq"):
        workers = [child for child in _children(pid) if _alive(child) and child != os.getpid()]
        if not workers:
            raise RuntimeError("the dramatiq master has no live worker process")
        return f"dramatiq master {pid} with {len(workers)} worker process(es)"
    if (
        _runs(argv, "gunicorn")
        or _runs(argv, GUNICORN_APP)
        or (_runs(argv, "coda-bridge") and {"start", "web"} & set(argv[1:]))
    ):
        url = f"http://127.0.0.1:{os.environ.get('CODA_PORT', '8080')}/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_SEC) as response:  # loopback only
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
        except (OSError, urllib.error.URLError) as exc:
            raise RuntimeError(f"{url} did not answer: {exc}") from None
        return f"{url} answered 200"
    return f"process {pid} runs"


if __name__ == "__main__":
    try:
        print(check())
    except (RuntimeError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
