"""Processes other than the bridge wait for the node's identity: the bridge provisions it first."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ..errors import ConfigError
from ..settings import Settings
from .connect import load_node_settings

__all__ = ["wait_for_identity"]

logger = logging.getLogger(__name__)

#: How often a process waiting for the bridge to provision looks again.
IDENTITY_POLL_SEC = 1.0


def wait_for_identity(
    *, overrides: dict[str, Any] | None = None, timeout_sec: float | None = None
) -> Settings:
    """Settings with an identity, waiting for the bridge to provision the node when it has not yet.

    Workers and the web app may start before the bridge has connected for
    the first time (``honcho start``); they wait rather than exit.
    """
    deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
    with _exit_on_sigterm():
        return _poll_identity(overrides, deadline)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """While waiting, SIGTERM exits at once (a dramatiq worker's own handler only sets a flag)."""
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


def _poll_identity(overrides: dict[str, Any] | None, deadline: float | None) -> Settings:
    announced = False
    while True:
        settings = load_node_settings(overrides=overrides)
        if settings.has_identity:
            return settings
        if deadline is not None and time.monotonic() > deadline:
            raise ConfigError(
                f"no node identity in {settings.state_dir}: start the bridge with a node token first"
            )
        if not announced:
            logger.info("Waiting for the bridge to provision the node (state in %s).", settings.state_dir)
            announced = True
        time.sleep(IDENTITY_POLL_SEC)
