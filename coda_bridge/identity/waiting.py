"""Processes other than the bridge wait for what their role needs: the bridge provisions it first.

Each role needs its own part of the identity (see the table in
docs/operations.md): an executor (``jobs``) worker runs circuits and
writes job states to the cloud's Redis, so it needs ``qpu_id`` and
``redis_url`` and never the private key; only the processes that sign
(delivery, heartbeat, the bridge) need the key.  A process whose identity
was given by hand (``CODA_QPU_ID``, ``CODA_REDIS_URL``...) but is
incomplete for its role (and holds no key, so no bridge of this host connects
with it) stops at once with a :class:`RoleError` (exit 78) instead of
waiting for a bridge that will never fill the gap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

from ..errors import ConfigError
from ..logs import mask
from ..settings import ENV_PREFIX, Settings
from .connect import load_node_settings

__all__ = [
    "IDENTITY_FIELDS",
    "ROLE_NEEDS",
    "SIGNING_ROLES",
    "RoleError",
    "check_role",
    "exiting_on_sigterm",
    "identity_or_exit",
    "missing_for_role",
    "wait_for_identity",
    "worker_role",
]

logger = logging.getLogger(__name__)

#: How often a process waiting for the bridge to provision looks again, in seconds.
IDENTITY_POLL_SEC = 1.0

#: The settings that make up a node's identity; one set by the operator means "configured by hand".
IDENTITY_FIELDS = ("qpu_id", "jwt_key_id", "jwt_private_key", "redis_url")
_KEY = ("jwt_key_id", "jwt_private_key")
#: What each process needs before it can work.  ``node`` (a worker of every queue, or a caller that
#: names no role) needs the provisioned identity; ``redis_url`` comes with it from the same bundle.
ROLE_NEEDS: dict[str, tuple[str, ...]] = {
    "jobs": ("qpu_id", "redis_url"),
    "results": ("qpu_id", "redis_url", *_KEY),
    "control": ("qpu_id", "redis_url", *_KEY),
    "web": ("qpu_id", "redis_url"),
    "node": ("qpu_id", *_KEY),
}
#: Roles that sign JWTs and so keep the private key; every other role drops it after loading.
#: (A ``jobs`` worker keeps a key it was given, for the inline deliveries of a drain, but never needs one.)
SIGNING_ROLES = frozenset({"results", "control", "node", "bridge"})
_KEEPS_KEY_WHEN_GIVEN = frozenset({"jobs"})
#: The dramatiq options that name the queues a worker consumes.
_QUEUE_OPTIONS = ("--queues", "-Q")


class RoleError(ConfigError):
    """A process lacks what its role needs and nothing will provide it; exits ``EX_CONFIG`` (78)."""

    exit_code = os.EX_CONFIG


def worker_role(argv: Sequence[str]) -> str:
    """The role of a dramatiq worker from its command line: its one queue, else ``node`` (every queue)."""
    queues: list[str] = []
    args = list(argv)
    for index, arg in enumerate(args):
        if arg in _QUEUE_OPTIONS:
            queues.extend(itertools.takewhile(lambda value: not value.startswith("-"), args[index + 1 :]))
            break
        for option in _QUEUE_OPTIONS:
            if arg.startswith(option + "="):
                queues.append(arg.split("=", 1)[1])
    names = {queue.split(".", 1)[0] for queue in queues}
    if len(names) == 1 and (name := names.pop()) in ROLE_NEEDS:
        return name
    return "node"


def missing_for_role(settings: Settings, role: str) -> list[str]:
    """The settings ``role`` needs that ``settings`` lacks (empty: the process can work)."""
    if role not in ROLE_NEEDS:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLE_NEEDS)}")
    values = {
        "qpu_id": settings.qpu_id,
        "jwt_key_id": settings.jwt_key_id,
        "jwt_private_key": settings.jwt_private_key_value,
        "redis_url": settings.redis_url,
    }
    return [field for field in ROLE_NEEDS[role] if not values[field]]


def _by_hand(settings: Settings) -> bool:
    """The operator gave this process its identity (environment or settings file), and no bridge will.

    ``CODA_QPU_ID`` or ``CODA_REDIS_URL`` without a key: a process on a
    second host.  With ``CODA_JWT_PRIVATE_KEY`` too it may be a direct
    JWT start, whose bridge fills ``redis_url`` from the cloud: that waits.
    """
    fields = settings.model_fields_set
    return any(field in fields for field in ("qpu_id", "redis_url")) and "jwt_private_key" not in fields


def _variables(fields: Sequence[str]) -> str:
    return ", ".join(f"{ENV_PREFIX}_{field.upper()}" for field in fields)


def _for_role(settings: Settings, role: str) -> Settings:
    """``settings`` as the role may hold them: without the private key unless it signs."""
    if role in SIGNING_ROLES or role in _KEEPS_KEY_WHEN_GIVEN or settings.jwt_private_key is None:
        return settings
    return settings.replace(jwt_private_key=None)


def wait_for_identity(
    *,
    overrides: dict[str, Any] | None = None,
    timeout_sec: float | None = None,
    role: str = "node",
) -> Settings:
    """Settings with what ``role`` needs, waiting for the bridge to provision the node when it has not yet.

    Workers and the web app may start before the bridge has connected for
    the first time (``honcho start``); they wait rather than exit.  A
    process configured by hand that lacks part of what its role needs
    raises :class:`RoleError` at once.
    """
    deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
    with exiting_on_sigterm():
        return _for_role(_poll_identity(overrides, deadline, role), role)


def identity_or_exit(role: str) -> Settings:
    """:func:`wait_for_identity` for a worker process: a :class:`ConfigError` is one line and exit 78.

    A dramatiq worker process would print a traceback and be restarted; this
    line and ``EX_CONFIG`` tell the master (and systemd, and ``start``) not to.
    """
    try:
        return wait_for_identity(role=role)
    except ConfigError as exc:
        print(f"error: {mask(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(os.EX_CONFIG) from None


@contextlib.contextmanager
def exiting_on_sigterm() -> Iterator[None]:
    """While waiting, SIGTERM exits at once (a dramatiq worker's or gunicorn's handler only sets a flag)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_role(settings: Settings, role: str) -> None:
    """Raise :class:`RoleError` when ``settings`` were given by hand and lack what ``role`` needs.

    For a command to call before it starts a process of ``role`` (``worker``),
    so the refusal is one line from the command instead of one from inside it.
    """
    missing = missing_for_role(settings, role)
    if missing and _by_hand(settings):
        raise RoleError(
            f"the {role} process needs {_variables(ROLE_NEEDS[role])}; "
            f"{_variables(missing)} not set (identity given by hand, so no bridge will provide it)"
        )


def _poll_identity(overrides: Mapping[str, Any] | None, deadline: float | None, role: str) -> Settings:
    announced = False
    while True:
        settings = load_node_settings(overrides=overrides)
        missing = missing_for_role(settings, role)
        if not missing:
            return settings
        check_role(settings, role)
        if deadline is not None and time.monotonic() > deadline:
            raise ConfigError(
                f"no node identity in {settings.state_dir}: start the bridge with a node token first"
            )
        if not announced:
            logger.info(
                "Waiting for the bridge to provision the node (%s needs %s; state in %s).",
                role,
                ", ".join(missing),
                settings.state_dir,
            )
            announced = True
        time.sleep(IDENTITY_POLL_SEC)
