"""gunicorn serving the probes app, with nothing from the working directory on the import path.

``python -P -m coda_bridge.web.gunicorn_app [--bind H:P] [--workers N] APP``
is ``python -m gunicorn --config python:coda_bridge.web.gunicorn_config APP``
as gunicorn's documented custom application: the same settings (then
``GUNICORN_CMD_ARGS``, then these options), the same arbiter and workers,
without the step of gunicorn's own command that puts its ``chdir`` (the
working directory) first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.util import import_app

from ..logs import JsonFormatter, SecretFilter
from ..sdnotify import WatchdogPinger, watchdog_interval_sec

__all__ = ["JsonLogger", "ProbesServer", "main", "start_watchdog", "stop_registration"]


def start_watchdog(server: Any) -> None:
    """gunicorn's ``when_ready`` hook: under a unit with ``WatchdogSec=``, the arbiter pings while it has
    workers (gunicorn itself sends READY=1 once it listens); a hung arbiter stops pinging."""
    interval = watchdog_interval_sec()
    if interval is not None:
        WatchdogPinger(lambda: bool(server.WORKERS), interval).start()


def stop_registration(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: the web process's registration (left on the app by its process
    entry under ``CODA_REGISTRATION``) ends with the worker, its key removed rather than left for the TTL."""
    config = getattr(getattr(worker, "wsgi", None), "config", None)
    registration = config.get("CODA_REGISTRATION") if isinstance(config, dict) else None
    if registration is not None:
        registration.stop()


class JsonLogger(Logger):
    """gunicorn's logger writing the node's JSON lines (``CODA_LOG_FORMAT=json``; see gunicorn_config)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)
                handler.addFilter(SecretFilter())


class ProbesServer(BaseApplication):
    """gunicorn's arbiter on the WSGI app ``app_uri`` (``module:callable`` or ``module:factory(args)``)."""

    def __init__(self, app_uri: str, options: Mapping[str, Any]) -> None:
        self.app_uri = app_uri
        self.options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        from . import gunicorn_config  # noqa: PLC0415 - gunicorn_config loads the settings when imported

        for name, value in vars(gunicorn_config).items():
            if name in self.cfg.settings:
                self.cfg.set(name, value)
        from_env = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
        for name, value in vars(from_env).items():
            if value is not None and name != "args":
                self.cfg.set(name, value)
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return import_app(self.app_uri)


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m coda_bridge.web.gunicorn_app")
    parser.add_argument("--bind", help="HOST:PORT (default: CODA_HOST and CODA_PORT)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: CODA_WEB_WORKERS)")
    parser.add_argument("app", help="the WSGI app, as gunicorn takes it")
    values = parser.parse_args(args)
    options = {name: getattr(values, name) for name in ("bind", "workers") if getattr(values, name)}
    ProbesServer(values.app, options).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
