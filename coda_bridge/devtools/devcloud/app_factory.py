"""Flask app factory of the local Coda cloud simulator (devcloud): wires the two blueprints to one state.

The node API (:mod:`.node_api`) is checked as strictly as the real cloud checks it; the admin API
(:mod:`.admin_api`) drives the simulator.  Every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from flask import Flask, request
from werkzeug.exceptions import HTTPException

from .admin_api import ADMIN_PREFIX, MAX_QUBITS, TARGETS, admin
from .cloud import DEFAULT_API_PREFIX, EXTENSION_KEY, REDIS_TIMEOUT_SEC, DevCloud, Reply, devcloud_of, reply
from .job_submission import BULK_CHUNK_JOBS, DEFAULT_SHOTS, MAX_BULK_JOBS
from .node_api import DEFAULT_VPN_CHECK_INTERVAL_SEC, node_blueprint
from .store import Store
from .store_error import StoreError
from .validation import WEBHOOK_ERROR_MAX_CHARS

__all__ = [
    "DEFAULT_API_PREFIX",
    "DevCloud",
    "create_app",
    "devcloud_of",
    # Settings defined here before the split, still importable from here.
    "ADMIN_PREFIX",
    "BULK_CHUNK_JOBS",
    "DEFAULT_SHOTS",
    "DEFAULT_VPN_CHECK_INTERVAL_SEC",
    "EXTENSION_KEY",
    "MAX_BULK_JOBS",
    "MAX_QUBITS",
    "REDIS_TIMEOUT_SEC",
    "TARGETS",
    "WEBHOOK_ERROR_MAX_CHARS",
    "admin",
]

log = logging.getLogger(__name__)


def _json_error(exc: Exception) -> Reply:
    if isinstance(exc, StoreError):
        return reply({"error": exc.message}, exc.status)
    if isinstance(exc, HTTPException):
        return reply({"error": exc.description or exc.name}, exc.code or 500)
    log.exception("devcloud: unhandled error in %s %s", request.method, request.path)
    return reply({"error": f"internal error ({type(exc).__name__})"}, 500)


def create_app(
    store: Store | None = None,
    *,
    redis_url: str | None = None,
    redis_client: redis.Redis | None = None,
    public_base_url: str | None = None,
    api_prefix: str = DEFAULT_API_PREFIX,
    accept_unknown_jobs: bool = False,
    required_headers: Mapping[str, str] | None = None,
) -> Flask:
    """The simulator as a Flask app.

    ``redis_url`` is the cloud's Redis (job streams, status hashes, cancel
    keys) and the URL handed out in bundles; ``public_base_url`` replaces
    the request's own host as ``cloud_base_url`` and in callback URLs;
    ``accept_unknown_jobs`` records results for jobs the simulator did not
    submit instead of answering 404; with ``required_headers`` the node API
    refuses (401) every request that lacks one of them, as a staging cloud
    behind deployment protection does (the admin API stays open).
    """
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = DevCloud(
        store if store is not None else Store(),
        redis_url=redis_url,
        redis_client=redis_client,
        public_base_url=public_base_url,
        api_prefix="/" + api_prefix.strip("/"),
        accept_unknown_jobs=accept_unknown_jobs,
        required_headers=required_headers,
    )
    app.register_blueprint(node_blueprint("/" + api_prefix.strip("/")))
    app.register_blueprint(admin)
    app.register_error_handler(StoreError, _json_error)
    app.register_error_handler(HTTPException, _json_error)
    app.register_error_handler(Exception, _json_error)
    return app
