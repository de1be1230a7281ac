"""The probes app as ``start`` serves it: gunicorn boots with the bridge, the app once the bridge connected.

``python -P -m coda_bridge.web.gunicorn_app
"coda_bridge.ops.webentry:create_app_after_connect(T)"``: the gunicorn
worker imports the app's modules at once, then waits for a connect at or
after ``T`` (this start's bridge), so the app is built from the fresh
bundle while the imports overlap the bridge's connect.  A SIGTERM during
the wait ends the worker at once.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ..trust import python_argv

__all__ = ["create_app_after_connect", "web_argv"]


def create_app_after_connect(since: float | None = None) -> Any:
    """:func:`~coda_bridge.web.app.create_app`, once a connect at or after ``since`` finished."""
    from ..web.app import create_app  # the imports first: they overlap the bridge's connect

    if since is not None:
        from ..identity.waiting import exiting_on_sigterm
        from .runners import wait_connected

        with exiting_on_sigterm():
            wait_connected(since, threading.Event())
    return create_app()


def web_argv(since: float | None, python: str | None = None) -> tuple[str, ...]:
    """gunicorn on the probes app, with the package's config (bind, workers and threads from settings)."""
    app = f"coda_bridge.ops.webentry:create_app_after_connect({since!r})"
    return python_argv(python or sys.executable, "-m", "coda_bridge.web.gunicorn_app", app)
