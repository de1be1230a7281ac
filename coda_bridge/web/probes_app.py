"""The probes app (PROTOCOL.md section 7): a Flask app factory served by gunicorn.

``/health`` says the process runs.  ``/ready`` says the node can take
jobs: no executor that failed to build, a running jobs worker whose executor is built,
VPN state ``ready``, the cloud's Redis and API answering, the bridge having read the stream
recently, and neither a pause nor a device state holding the node; it also shows the cloud
clock's offset from this host's.
``/metrics`` reads the node's shared counters from the broker Redis at
scrape time, so it is right under any number of gunicorn workers.  ``/status``
is the same state as one HTML page for a person (:mod:`~coda_bridge.web.statuspage`),
behind the dashboard's authentication rules.  No body ever carries a secret.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hmac
import ipaddress
import logging
import os
import re
import sys
import time
from typing import Any

import redis
from flask import Flask, Response, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from ..cloud.redis_keys import group_name, stream_key
from ..components import NodeComponents
from ..control.pause_book import PauseBook
from ..errors import ConfigError
from ..identity.waiting import wait_for_identity
from ..logs import configure_logging
from ..metrics.collectors import NodeCollector
from ..queueing.eviction import EvictionWatch
from ..queueing.redis_broker import create_broker
from ..queueing.refusal import WriteProbe, refusal
from ..replies import as_text
from ..settings import Settings
from ..state.node_state import NodeState, utc_iso
from ..state.registry import ready_jobs_workers
from ..trust import SAFE_PATH_FLAG
from .statuspage import STATUS_PREFIX, PauseBanner, status_app

__all__ = ["create_app", "readiness", "serve"]

logger = logging.getLogger(__name__)

#: A readiness check slower than this answers 503 (PROTOCOL.md section 7).
READY_TIMEOUT_SEC = 5.0
#: The cloud Redis PING of a readiness check.
PING_TIMEOUT_SEC = 2.0
#: The paths the probes app serves itself: no dashboard may be mounted on or above one.
OWN_PATHS = ("/health", "/ready", "/metrics", STATUS_PREFIX)
#: A dashboard prefix a client can request as written: printable ASCII, no dot or empty segments, no '%',
#: '?', '#' or '\\' (a browser normalises, encodes or cuts them, so no request would reach the mount).
_SEGMENT = r"(?!\.\.?(?:/|$))(?:(?![/%?#\\])[!-~])+"
_PLAIN_PATH = re.compile(rf"/*{_SEGMENT}(?:/{_SEGMENT})*/*")
#: Why nothing is known, when the broker does not answer.
NO_BROKER = "the local broker Redis does not answer"
#: Why the node cannot run a job: no live jobs worker holds a built executor (none booted yet, or all gone).
NO_JOBS_WORKER = "no running jobs worker has a built executor"


def readiness(
    settings: Settings,
    state: NodeState,
    cloud: redis.Redis,
    writes: WriteProbe | None = None,
    eviction: EvictionWatch | None = None,
) -> dict[str, Any]:
    """The ``/ready`` body: ``ready``, ``vpn_state``, ``redis_healthy``, ``current_job``, ``paused``
    (with ``pause``: its note and end), ``device_state`` (+ ``reason``).

    A paused node, or one whose device is not ready, is alive but not ready
    for work: ``ready`` false, and ``reason`` says which.

    ``cloud_api_reachable`` and ``clock_offset_sec`` (the cloud's clock minus
    this host's, ``null`` until measured) come along.

    Every field is there even when the local broker Redis does not answer
    (``booting`` and ``null`` then: nothing is known).  ``writes`` asks the
    broker to take a write: one that answers but refuses writes is named.
    ``broker_eviction_policy`` is the broker's ``maxmemory-policy`` when it
    evicts keys (jobs can run twice; ``eviction`` reads it), else ``null``.
    """
    try:
        redis_healthy = bool(cloud.ping())
    except redis.RedisError:
        redis_healthy = False
    body: dict[str, Any] = {
        "ready": False,
        "vpn_state": "booting",
        "redis_healthy": redis_healthy,
        "current_job": None,
        "cloud_api_reachable": None,
        "clock_offset_sec": None,
        "paused": None,
        "pause": None,
        "device_state": None,
        "broker_eviction_policy": None,
    }
    try:
        vpn_state = state.vpn_state()
        body["vpn_state"] = vpn_state
        body["current_job"] = state.current_job()
        last_read = state.last_stream_read()
        executor_failure = state.executor_failure()
        jobs_workers = ready_jobs_workers(state.client, state.qpu_id)
        cloud_down = state.cloud_down()
        clock = state.clock_offset()
        hold = PauseBook(state.client, state.qpu_id).hold()
        refused = writes() if writes is not None else None
        evicts = eviction() if eviction is not None else None
    except redis.RedisError as exc:
        body["reason"] = _refused(exc, writes) or NO_BROKER
        return body
    body["cloud_api_reachable"] = cloud_down is None
    body["clock_offset_sec"] = round(clock[0], 1) if clock is not None else None
    body["paused"] = hold.pause is not None
    body["pause"] = hold.pause.as_dict() if hold.pause is not None else None
    body["device_state"] = hold.device.value if hold.device is not None else None
    body["broker_eviction_policy"] = evicts.policy if evicts is not None and evicts.evicting else None
    stale_after = settings.ready_stream_stale_sec
    if refused is not None:
        body["reason"] = refused
    elif executor_failure is not None:
        # the executor worker stopped at boot: no job can run until the factory or device file is fixed
        body["reason"] = f"the executor cannot be built: {executor_failure['error']}"
    elif not jobs_workers:
        # none has booted and built it yet, or every one that had is gone: a job would only wait
        body["reason"] = NO_JOBS_WORKER
    elif vpn_state != "ready":
        body["reason"] = f"VPN state is {vpn_state}"
    elif not redis_healthy:
        body["reason"] = "the cloud's Redis does not answer"
    elif cloud_down is not None:
        since, error = cloud_down
        body["reason"] = (
            f"the cloud's API does not answer ({error}) since {utc_iso(since)}; "
            "results wait and go out when it answers"
        )
    elif last_read is None or time.time() - last_read > stale_after:
        body["reason"] = f"the bridge has not read the job stream in the last {stale_after:g} s"
    elif not _group_exists(cloud, state.qpu_id):
        # a cloud Redis that restarted empty: reads succeeded before, none can now until the bridge
        # recreates its group, however fresh its last read looks
        body["reason"] = "the job stream has no consumer group yet (the bridge recreates it)"
    elif hold.reason is not None:
        body["reason"] = hold.reason  # paused, or the device not ready: alive, but takes no job
    else:
        body["ready"] = True
    return body


def _refused(exc: redis.RedisError, writes: WriteProbe | None) -> str | None:
    """Why the broker refused, when ``exc`` is a refusal of writes (the probe's words when it has one)."""
    reason = refusal(exc)
    if reason is None:
        return None
    with contextlib.suppress(redis.RedisError):
        return (writes() if writes is not None else None) or f"the local broker refuses writes: {reason}"
    return f"the local broker refuses writes: {reason}"


def _group_exists(cloud: redis.Redis, qpu_id: str) -> bool:
    try:
        groups: Any = cloud.xinfo_groups(stream_key(qpu_id))
    except redis.RedisError:  # "no such key" when the stream itself is gone
        return False
    wanted = group_name(qpu_id)
    return any(as_text(group.get("name")) == wanted for group in groups)


class _IndexRedirect:
    """Send the bare prefix (``/dashboard``) to the dashboard's index (``/dashboard/``), which it serves."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("PATH_INFO"):
            start_response("302 Found", [("Location", environ.get("SCRIPT_NAME", "") + "/")])
            return [b""]
        return self.app(environ, start_response)


class _BasicAuth:
    """HTTP Basic authentication in front of a WSGI app (the dashboard can delete messages)."""

    def __init__(self, app: Any, username: str, password: str) -> None:
        self.app = app
        self.expected = base64.b64encode(f"{username}:{password}".encode())

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credentials = given.partition(" ")
        # WSGI headers are latin-1 text: compared as the bytes they came as (a non-ASCII one just fails)
        given_bytes = credentials.strip().encode("latin-1", errors="replace")
        if scheme.lower() == "basic" and hmac.compare_digest(given_bytes, self.expected):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="coda-bridge dashboard"')])
        return [b"authentication required\n"]


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_dashboard(settings: Settings) -> None:
    """Refuse a dashboard anyone who reaches the probes port could use (credentials, or a loopback bind),
    and one mounted where it would hide a page of the probes app."""
    if not settings.dashboard_enabled:
        return
    if settings.dashboard_password is None and not is_loopback(settings.host):
        raise ConfigError(
            f"dashboard_enabled on {settings.host}:{settings.port} without CODA_DASHBOARD_PASSWORD: "
            "the dashboard can delete messages; set a password or bind the probes to 127.0.0.1"
        )
    prefix = "/" + settings.dashboard_prefix.strip("/")
    if prefix != "/" and not _PLAIN_PATH.fullmatch(settings.dashboard_prefix):
        raise ConfigError(
            f"CODA_DASHBOARD_PREFIX={settings.dashboard_prefix!r} is not a path a browser requests as "
            "written (printable ASCII; no spaces, '%', '?', '#', '\\', '.' or '..' segments, or '//'): "
            "mount the dashboard on a plain path (the default is /dashboard)"
        )
    for own in OWN_PATHS:
        if prefix == "/" or f"{prefix}/".startswith(f"{own}/") or own.startswith(f"{prefix}/"):
            raise ConfigError(
                f"CODA_DASHBOARD_PREFIX={settings.dashboard_prefix!r} would hide the probes app's {own}: "
                "mount the dashboard on a path of its own (the default is /dashboard)"
            )


class _Refused:
    """A 403 naming what to set: the status page without a password on a bind others reach."""

    def __init__(self, why: str) -> None:
        self.body = why.encode() + b"\n"

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [self.body]


def _mount_status(app: Flask, settings: Settings, page: Any) -> None:
    """``/status`` under the dashboard's rules: its password when set, else only on a loopback bind.

    The page names the hosts and pids of the node's processes and its current job: not for anyone
    who reaches the probes port (``/ready`` and ``/metrics`` stay open for probes and Prometheus).
    """
    if settings.dashboard_password is not None:
        password = settings.dashboard_password.get_secret_value()
        page = _BasicAuth(page, settings.dashboard_username, password)
    elif not is_loopback(settings.host):
        page = _Refused(
            f"the status page needs CODA_DASHBOARD_PASSWORD when the probes bind to {settings.host} "
            "(it names hosts and jobs); set one, or bind the probes to 127.0.0.1"
        )
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {STATUS_PREFIX: page})  # type: ignore[method-assign,unused-ignore]


def _mount_dashboard(app: Flask, settings: Settings) -> None:
    check_dashboard(settings)
    try:
        from dramatiq_dashboard import DashboardApp  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415 - optional dependency
    except ImportError:
        logger.error(
            "dashboard_enabled is set but dramatiq-dashboard is not installed: "
            "pip install --no-deps dramatiq-dashboard==0.4.0"
        )
        return

    prefix = "/" + settings.dashboard_prefix.strip("/")
    # the dashboard lists only the queues its broker declared: create_broker declares ours
    broker = create_broker(settings)
    dashboard: Any = _IndexRedirect(DashboardApp(broker=broker, prefix=prefix))
    # the pause in force on top of its pages
    dashboard = PauseBanner(dashboard, PauseBook(broker.client, str(settings.qpu_id)))
    if settings.dashboard_password is not None:
        password = settings.dashboard_password.get_secret_value()
        dashboard = _BasicAuth(dashboard, settings.dashboard_username, password)
        logger.info("dramatiq dashboard mounted at %s, behind HTTP Basic authentication.", prefix)
    else:
        logger.warning("dramatiq dashboard mounted at %s without a password (loopback bind only).", prefix)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {prefix: dashboard})  # type: ignore[method-assign,unused-ignore]


def create_app(settings: Settings | None = None) -> Flask:
    """The probes app for this node: it only configures (no wait, no thread, nothing written).

    Without ``settings``, the node's as they are now: a node not provisioned yet
    is a :class:`ConfigError`.  The process entry that waits for the bridge to
    provision the node and registers the web process is
    :func:`coda_bridge.ops.webentry.web_app`.
    """
    if settings is None:
        settings = wait_for_identity(role="web", timeout_sec=0)
    configure_logging(settings.log_level, settings.log_format)
    if not settings.redis_url:
        raise ConfigError("redis_url is not known: the cloud bundle did not name the job Redis")
    parts = NodeComponents(settings, signs=False)  # the probes never sign: they need no private key
    cloud = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=PING_TIMEOUT_SEC,
        socket_connect_timeout=PING_TIMEOUT_SEC,
        retry=Retry(NoBackoff(), 0),
    )
    checks = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="coda-ready")
    registry = CollectorRegistry(auto_describe=False)
    # the node's metrics, dramatiq's, the stream's (through the cloud client) and the app's processes
    registry.register(NodeCollector(settings, parts.state, cloud))
    writes = WriteProbe(parts.local_redis, parts.state.key("write-probe"))
    registry.register(writes)  # coda_broker_refusing_writes
    eviction = EvictionWatch(parts.local_redis, log=False)  # the bridge logs it
    registry.register(eviction)  # coda_broker_evicting, coda_broker_evicted_keys_total

    app = Flask("coda_bridge")
    app.config["CODA_PARTS"] = parts

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> tuple[Response, int]:
        future = checks.submit(readiness, settings, parts.state, cloud, writes, eviction)
        try:
            body = future.result(timeout=READY_TIMEOUT_SEC)
        except concurrent.futures.TimeoutError:
            return jsonify({"ready": False, "reason": "health check timeout"}), 503
        return jsonify(body), 200 if body["ready"] else 503

    @app.get("/metrics")
    def metrics() -> Response:
        try:
            payload = generate_latest(registry)
        except redis.RedisError:
            return Response("# the local broker Redis does not answer\n", status=503, mimetype="text/plain")
        return Response(payload, mimetype=CONTENT_TYPE_LATEST)

    def ready_body() -> dict[str, Any]:
        future = checks.submit(readiness, settings, parts.state, cloud, writes)
        try:
            return future.result(timeout=READY_TIMEOUT_SEC)
        except concurrent.futures.TimeoutError:
            return {"ready": False, "reason": "health check timeout"}

    _mount_status(app, settings, status_app(settings, parts.state, cloud, ready_body))
    if settings.dashboard_enabled:
        _mount_dashboard(app, settings)
    return app


def serve(settings: Settings) -> None:
    """Replace this process with gunicorn serving the probes app (config in the package), each worker
    through the process entry :func:`~coda_bridge.ops.webentry.web_app`."""
    argv = [
        sys.executable, SAFE_PATH_FLAG, "-m", "coda_bridge.web.gunicorn_app",
        "--bind", f"{settings.host}:{settings.port}",
        "--workers", str(settings.web_workers),
        "coda_bridge.ops.webentry:web_app()",
    ]  # fmt: skip
    os.execv(sys.executable, argv)
