"""Preload, then fork: the supervisor imports what every part imports once, and forks each part from it.

A part forked this way starts without importing its libraries again, and
the pages those imports filled stay shared between the supervisor and
every part (copy-on-write; :func:`gc.freeze` keeps the collector from
touching them), so each part costs only what it adds (gunicorn's
``preload_app``, applied to the whole node).  Only a process with one
thread forks: a lock another thread held at the fork would stay held in
the child.

A forked part runs the same command line it would run after an ``exec``
(its ``sys.argv`` and, through setproctitle, what ``ps`` shows), in a
process group of its own, with its own environment, and its output on
the pipe the supervisor reads.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence

from .exits import die_with_parent

__all__ = ["PRELOAD", "can_fork", "fork_part", "preload"]

#: What the bridge and every worker import before they differ: the libraries and the node's own steps
#: (not the executor, the simulator, Flask or numpy: only the part that runs them imports them).
PRELOAD = (
    "dramatiq",
    "redis",
    "requests",
    "coda_bridge.settings",
    "coda_bridge.parts",
    "coda_bridge.identity.connect",
    "coda_bridge.identity.waiting",
    "coda_bridge.broker.redis_broker",
    "coda_bridge.broker.middleware",
    "coda_bridge.broker.registry",
    "coda_bridge.pipeline.bridge",
    "coda_bridge.pipeline.intake",
    "coda_bridge.pipeline.execute",
    "coda_bridge.pipeline.delivery",
    "coda_bridge.control.heartbeat",
    "coda_bridge.ops.runners",
)
#: Signals the supervisor handles itself: blocked across the fork, back to their defaults in a part.
_SUPERVISOR_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def preload(modules: Sequence[str] = PRELOAD) -> None:
    """Import ``modules`` (dynaconf without its Flask extension), then freeze them out of the collector."""
    from .runners import import_dynaconf_without_flask

    import_dynaconf_without_flask()
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


def can_fork() -> bool:
    """Whether forking is safe here: this process runs one thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


def fork_part(entry: str, argv: Sequence[str], env: Mapping[str, str], output_fd: int) -> int:
    """Fork a part that runs ``entry`` (``module:function``) as the command ``argv``; its pid.

    The part's standard output and error go to ``output_fd``; its standard
    input is ``/dev/null``.  The function is called with ``sys.argv`` set to
    the command line after ``python -m``; what it returns (or raises
    :class:`SystemExit` with) is the part's exit status.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the child: it never returns
            _run_part(entry, argv, env, output_fd, previous, parent=parent)
        with contextlib.suppress(OSError):  # the child does the same: whichever comes first
            os.setpgid(pid, pid)
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _run_part(
    entry: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    output_fd: int,
    mask: set[int | signal.Signals],
    *,
    parent: int,
) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        die_with_parent()
        if os.getppid() != parent:  # the supervisor died before the line above: nobody watches this part
            os._exit(1)
        for signum in _SUPERVISOR_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        command = list(argv)
        _set_title(" ".join(command))  # first: setproctitle finds its room only while environ is untouched
        os.environ.clear()
        os.environ.update(env)
        sys.argv = command[2:] if command[1:2] == ["-m"] else command[1:]
        module, _, function = entry.partition(":")
        result = getattr(importlib.import_module(module), function)()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    """The status the interpreter would exit with for ``exc`` (a message is printed and means 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _set_title(title: str) -> None:
    """What ``ps`` and ``/proc/<pid>/cmdline`` show: the command line this part would run after an exec."""
    import setproctitle

    setproctitle.setproctitle(title)
