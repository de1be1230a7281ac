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
import importlib.util
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence

from ..lean_imports import import_dynaconf_without_flask
from ..trust import SAFE_PATH_FLAG
from .exits import die_with_parent

__all__ = ["PRELOAD", "can_fork", "exec_setup", "fork_part", "preload", "signals_held"]

#: What the bridge and every worker import before they differ: the libraries and the node's own steps
#: (not the executor, the simulator, Flask or numpy: only the part that runs them imports them).
PRELOAD = (
    "dramatiq",
    "redis",
    "requests",
    "coda_bridge.settings",
    "coda_bridge.components",
    "coda_bridge.identity.connect",
    "coda_bridge.identity.waiting",
    "coda_bridge.queueing.redis_broker",
    "coda_bridge.queueing.middleware",
    "coda_bridge.state.registry",
    "coda_bridge.pipeline.bridge",
    "coda_bridge.pipeline.intake",
    "coda_bridge.pipeline.execute",
    "coda_bridge.pipeline.delivery",
    "coda_bridge.control.heartbeat",
    "coda_bridge.ops.runners",
)
#: Signals the supervisor handles itself: blocked across the fork, back to their defaults in a part.
_SUPERVISOR_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
#: Descriptors at and above 3 that a part closes (what the kernel allows a process at most).
_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536


def preload(modules: Sequence[str] = PRELOAD) -> None:
    """Import ``modules`` (dynaconf without its Flask extension), then freeze them out of the collector."""
    import_dynaconf_without_flask()
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


def can_fork() -> bool:
    """Whether forking is safe here: this process runs one thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold the supervisor's signals: one that comes meanwhile is handled on leaving, not before.

    Around a fork and the bookkeeping after it, so a stop that comes then
    finds the new process already recorded (and a child never runs the
    supervisor's handler).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def exec_setup() -> None:
    """``preexec_fn`` of a part that is exec'd instead: it dies with the supervisor, and gets the
    signals :func:`signals_held` blocked unblocked (an exec keeps the mask)."""
    die_with_parent()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)


def fork_part(entry: str, argv: Sequence[str], env: Mapping[str, str], output_fd: int) -> int:
    """Fork a part that runs ``entry`` (``module:function``) as the command ``argv``; its pid.

    The part's standard output and error go to ``output_fd``; its standard
    input is ``/dev/null``; no other descriptor of this process stays open
    in it.  The function is called with ``sys.argv`` as ``python -m`` would
    set it; what it returns (or raises :class:`SystemExit` with) is the
    part's exit status.  Call it inside :func:`signals_held`.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    with signals_held():
        pid = os.fork()
        if pid == 0:  # the child: it never returns
            _run_part(entry, argv, env, output_fd, parent=parent)
    with contextlib.suppress(OSError):  # the child does the same: whichever comes first
        os.setpgid(pid, pid)
    return pid


def _run_part(
    entry: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    output_fd: int,
    *,
    parent: int,
) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        die_with_parent()
        if os.getppid() != parent:  # the supervisor died before the line above: nobody watches this part
            os._exit(1)
        _reset_signals()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.closerange(3, _MAX_FD)  # as Popen's close_fds: the group's pipes and whatever it inherited
        command = list(argv)
        _set_title(" ".join(command))  # first: setproctitle finds its room only while environ is untouched
        os.environ.clear()
        os.environ.update(env)
        sys.argv = _main_argv(command)
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


def _reset_signals() -> None:
    """Signals as a fresh interpreter has them, and no terminal signal meant for the supervisor.

    Still blocked here.  A SIGINT or SIGHUP sent to the supervisor's process
    group before ``setpgid`` may be pending: ignoring it before unblocking
    discards it.  A pending SIGTERM is the supervisor's own (a stop that
    came as this part started): it is kept, and ends the part at once.
    """
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as in any Python


def _main_argv(command: list[str]) -> list[str]:
    """``sys.argv`` as ``python [-P] -m MODULE ARGS`` sets it: the path of the file it runs, then ARGS."""
    flags = 1
    while command[flags : flags + 1] == [SAFE_PATH_FLAG]:
        flags += 1
    if command[flags : flags + 1] != ["-m"] or len(command) < flags + 2:
        return command[flags:]
    module = command[flags + 1]
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations is not None:  # a package runs its __main__
        spec = importlib.util.find_spec(f"{module}.__main__")
    origin = spec.origin if spec is not None and spec.origin else module
    return [origin, *command[flags + 2 :]]


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
    import setproctitle  # noqa: PLC0415 - only a forked part sets its title

    setproctitle.setproctitle(title)
