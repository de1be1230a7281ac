"""The probes app's process entry: what a gunicorn worker (or ``start``) does around the app factory.

``create_app`` only configures; the entry waits for the node's identity
(the bridge provisions it), registers the web process in the broker (``status``
lists every web worker) and leaves the registration on the app, for
gunicorn's ``worker_exit`` hook to stop (:func:`~coda_bridge.web.gunicorn_app.stop_registration`).

``python -P -m coda_bridge.web.gunicorn_app
"coda_bridge.ops.webentry:create_app_after_connect(T)"``, as ``start`` serves
it: the gunicorn worker imports the app's modules at once, then waits for a
connect at or after ``T`` (this start's bridge), so the app is built from the
fresh bundle while the imports overlap the bridge's connect.  A SIGTERM during
the wait ends the worker at once.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from ..identity.waiting import exiting_on_sigterm, wait_for_identity
from ..logs import configure_logging
from ..state.registry import Registration
from ..trust import python_argv
from .runners import wait_connected

if TYPE_CHECKING:
    from flask import Flask

#: Where the app keeps its process's registration, for gunicorn's ``worker_exit`` hook.
REGISTRATION_CONFIG = "CODA_REGISTRATION"

__all__ = ["REGISTRATION_CONFIG", "create_app_after_connect", "registered", "web_app", "web_argv"]


def registered(app: Flask) -> Registration:
    """Register the web process of ``app`` (its beat thread runs until the registration is stopped)."""
    parts = app.config["CODA_PARTS"]
    registration = Registration(parts.local_redis, parts.qpu_id, "web").start()
    app.config[REGISTRATION_CONFIG] = registration
    return registration


def web_app() -> Flask:
    """The probes app of a gunicorn worker: once the node has its identity, registered as a web process."""
    # flask and the app's modules load in the web worker only (``start`` imports this module for web_argv)
    from ..web.probes_app import create_app  # noqa: PLC0415 - start imports this module for web_argv; flask loads in the worker

    configure_logging()  # the wait's lines, before the settings say how
    app = create_app(wait_for_identity(role="web"))
    registered(app)
    return app


def create_app_after_connect(since: float | None = None) -> Flask:
    """:func:`web_app`, once a connect at or after ``since`` finished."""
    if since is not None:
        with exiting_on_sigterm():
            wait_connected(since, threading.Event())
    return web_app()


def web_argv(since: float | None, python: str | None = None) -> tuple[str, ...]:
    """gunicorn on the probes app, with the package's config (bind, workers and threads from settings)."""
    app = f"coda_bridge.ops.webentry:create_app_after_connect({since!r})"
    return python_argv(python or sys.executable, "-m", "coda_bridge.web.gunicorn_app", app)
