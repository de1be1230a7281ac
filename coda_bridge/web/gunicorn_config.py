"""gunicorn settings for the probes app (``deploy/gunicorn.conf.py`` loads this module).

Read from the same ``CODA_`` variables as everything else; the app itself
is its process entry ``coda_bridge.ops.webentry:web_app()``.
"""

from __future__ import annotations

from coda_bridge.settings import load_settings
from coda_bridge.web.gunicorn_app import start_watchdog, stop_registration

_settings = load_settings()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.web_workers
#: Threads per worker: one worker answers /health while a /ready waits on its Redis checks, and while
#: slow clients hold threads: a gthread worker gives a connection a thread once its first bytes come,
#: for as long as its request takes to arrive, so up to ``threads - 1`` connections trickling headers
#: at once leave the probes answering (threads start only when needed).  More than that is an attack:
#: keep the probes port off open networks (CODA_HOST) or put a proxy in front.
threads = 32
#: Threaded workers (sync workers would answer one probe at a time per process).
worker_class = "gthread"
#: /ready waits at most 5 s for its checks; a worker stuck far longer is replaced.
timeout = 30
#: Seconds a stopping worker gets for the probes it is answering (each is bounded by READY_TIMEOUT_SEC).
graceful_timeout = 6
#: No keep-alive: probes come seconds apart, and a stopping gthread worker would hold an idle
#: kept-alive connection open for up to 2 s.
keepalive = 0
#: gunicorn 27 opens a control socket shared by every instance of a user; the probes need none.
control_socket_disable = True
#: No access log by default (probes every few seconds would drown the node's own lines); turn it on
#: with GUNICORN_CMD_ARGS="--access-logfile -".  Not a CODA_ variable: every process would warn
#: that it is not a known setting.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
#: gunicorn's own lines in the node's format: JSON lines with CODA_LOG_FORMAT=json.
_JSON_LOGGER = "coda_bridge.web.gunicorn_app.JsonLogger"
logger_class = _JSON_LOGGER if _settings.log_format == "json" else "gunicorn.glogging.Logger"
proc_name = "coda-bridge-web"
#: Under systemd (Type=notify, WatchdogSec=): watchdog pings from the arbiter.
when_ready = start_watchdog
#: A worker's registration (made by the process entry, coda_bridge.ops.webentry) ends with the worker.
worker_exit = stop_registration
