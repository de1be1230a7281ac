"""The probes app (PROTOCOL.md section 7): a Flask app factory served by gunicorn.

``/health`` says the process runs.  ``/ready`` says the node can take
jobs: VPN state ``ready``, the cloud's Redis answering, and the bridge
having read the stream recently.  ``/metrics`` reads the node's shared
counters from the broker Redis at scrape time, so it is right under any
number of gunicorn workers.  No body ever carries a secret.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Flask, Response, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..broker.queues import QUEUES
from ..broker.redis_broker import create_broker
from ..broker.shared_state import NodeState
from ..cloud.keys import group_name, stream_key
from ..errors import ConfigError
from ..identity.waiting import wait_for_identity
from ..logs import configure_logging
from ..parts import NodeParts
from ..replies import as_text
from ..settings import Settings
from ..vpn.states import VPN_STATES

__all__ = ["create_app", "readiness", "serve"]

logger = logging.getLogger(__name__)

#: A readiness check slower than this answers 503 (PROTOCOL.md section 7).
READY_TIMEOUT_SEC = 5.0
#: The cloud Redis PING of a readiness check.
PING_TIMEOUT_SEC = 2.0
_JOB_OUTCOMES = ("completed", "failed", "cancelled", "skipped")


def readiness(settings: Settings, state: NodeState, cloud: redis.Redis) -> dict[str, Any]:
    """The ``/ready`` body: ``ready``, ``vpn_state``, ``redis_healthy``, ``current_job`` (+ ``reason``).

    Every field is there even when the local broker Redis does not answer
    (``booting`` and ``null`` then: nothing is known).
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
    }
    try:
        vpn_state = state.vpn_state()
        body["vpn_state"] = vpn_state
        body["current_job"] = state.current_job()
        last_read = state.last_stream_read()
    except redis.RedisError:
        body["reason"] = "the local broker Redis does not answer"
        return body
    stale_after = settings.ready_stream_stale_sec
    if vpn_state != "ready":
        body["reason"] = f"VPN state is {vpn_state}"
    elif not redis_healthy:
        body["reason"] = "the cloud's Redis does not answer"
    elif last_read is None or time.time() - last_read > stale_after:
        body["reason"] = f"the bridge has not read the job stream in the last {stale_after:g} s"
    elif not _group_exists(cloud, state.qpu_id):
        # a cloud Redis that restarted empty: reads succeeded before, none can now until the bridge
        # recreates its group, however fresh its last read looks
        body["reason"] = "the job stream has no consumer group yet (the bridge recreates it)"
    else:
        body["ready"] = True
    return body


def _group_exists(cloud: redis.Redis, qpu_id: str) -> bool:
    try:
        groups: Any = cloud.xinfo_groups(stream_key(qpu_id))
    except redis.RedisError:  # "no such key" when the stream itself is gone
        return False
    wanted = group_name(qpu_id)
    return any(as_text(group.get("name")) == wanted for group in groups)


class _NodeCollector:
    """Prometheus collector over the node's shared state (one Redis round trip or two per scrape)."""

    def __init__(self, settings: Settings, state: NodeState) -> None:
        self.state = state
        self.broker = create_broker(settings)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        state = self.state
        counters = state.counters()
        jobs = CounterMetricFamily("coda_bridge_jobs", "Jobs finished, by outcome.", labels=["outcome"])
        for outcome in _JOB_OUTCOMES:
            jobs.add_metric([outcome], counters.get(f"jobs_{outcome}", 0.0))
        yield jobs
        yield CounterMetricFamily(
            "coda_bridge_executor_seconds", "Time spent in the executor.", value=counters["executor_seconds"]
        )
        yield CounterMetricFamily(
            "coda_bridge_webhook_attempts", "Result deliveries attempted.", value=counters["webhook_attempts"]
        )
        yield CounterMetricFamily(
            "coda_bridge_webhook_failures",
            "Deliveries that will be retried.",
            value=counters["webhook_failures"],
        )
        yield CounterMetricFamily(
            "coda_bridge_webhook_dead_letters",
            "Results that ran out of delivery retries.",
            value=counters["webhook_dead_letters"],
        )
        yield CounterMetricFamily(
            "coda_bridge_heartbeats", "Heartbeats accepted by the cloud.", value=counters["heartbeats_sent"]
        )
        yield CounterMetricFamily(
            "coda_bridge_heartbeats_rejected",
            "Heartbeats refused or not delivered.",
            value=counters["heartbeats_rejected"],
        )
        depth = GaugeMetricFamily("coda_bridge_queue_depth", "Messages waiting, by queue.", labels=["queue"])
        dead = GaugeMetricFamily(
            "coda_bridge_dead_letter_depth", "Dead-lettered messages, by queue.", labels=["queue"]
        )
        sizes = self.broker.queue_sizes()
        for queue in QUEUES:
            depth.add_metric([queue], sizes.get(queue, 0))
            dead.add_metric([queue], sizes.get(f"{queue}.dead", 0))
        yield depth
        yield dead
        last = state.last_heartbeat_accepted()
        since = GaugeMetricFamily(
            "coda_bridge_seconds_since_heartbeat", "Seconds since the cloud last accepted a heartbeat."
        )
        since.add_metric([], time.time() - last if last else float("nan"))
        yield since
        vpn = GaugeMetricFamily("coda_bridge_vpn_state", "1 for the current VPN state.", labels=["state"])
        current = state.vpn_state()
        for name in VPN_STATES:
            vpn.add_metric([name], 1.0 if name == current else 0.0)
        yield vpn
        yield GaugeMetricFamily(
            "coda_bridge_running_jobs", "Jobs running now.", value=len(state.current_jobs())
        )


class _IndexRedirect:
    """Send the bare prefix (``/dashboard``) to the dashboard's index (``/dashboard/``), which it serves."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("PATH_INFO"):
            start_response("302 Found", [("Location", environ.get("SCRIPT_NAME", "") + "/")])
            return [b""]
        return self.app(environ, start_response)


def _mount_dashboard(app: Flask, settings: Settings) -> None:
    try:
        from dramatiq_dashboard import DashboardApp  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        logger.error(
            "dashboard_enabled is set but dramatiq-dashboard is not installed: "
            "pip install --no-deps dramatiq-dashboard==0.4.0"
        )
        return
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    prefix = "/" + settings.dashboard_prefix.strip("/")
    # the dashboard lists only the queues its broker declared: create_broker declares ours
    dashboard = _IndexRedirect(DashboardApp(broker=create_broker(settings), prefix=prefix))
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {prefix: dashboard})  # type: ignore[method-assign,unused-ignore]
    logger.warning("dramatiq dashboard mounted at %s: it has no authentication of its own.", prefix)


def create_app(settings: Settings | None = None) -> Flask:
    """The probes app for this node (waits for the node's identity when it has none yet)."""
    configure_logging(settings.log_level if settings else "INFO")
    if settings is None:
        settings = wait_for_identity()
        configure_logging(settings.log_level)
    if not settings.redis_url:
        raise ConfigError("redis_url is not known: the cloud bundle did not name the job Redis")
    parts = NodeParts(settings)
    cloud = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=PING_TIMEOUT_SEC,
        socket_connect_timeout=PING_TIMEOUT_SEC,
        retry=Retry(NoBackoff(), 0),
    )
    checks = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="coda-ready")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(settings, parts.state))

    app = Flask("coda_bridge")
    app.config["CODA_PARTS"] = parts

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> tuple[Response, int]:
        future = checks.submit(readiness, settings, parts.state, cloud)
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

    if settings.dashboard_enabled:
        _mount_dashboard(app, settings)
    return app


def serve(settings: Settings) -> None:
    """Replace this process with gunicorn serving :func:`create_app` (config in the package)."""
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", "python:coda_bridge.web.gunicorn_config",
        "--bind", f"{settings.host}:{settings.port}",
        "--workers", str(settings.web_workers),
        "coda_bridge.web.app:create_app()",
    ]  # fmt: skip
    os.execv(sys.executable, argv)
