"""Flask app factory of the local Coda cloud simulator (devcloud).

Two halves: the node API the real cloud serves (PROTOCOL.md sections 1 to 5,
plus health), checked as strictly as the cloud checks it, and an
unauthenticated admin API under ``/devcloud`` that tests, the demo and the
CLI use to register QPUs, mint tokens, submit jobs, inject faults and read
back what the node sent.  Every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import jwt
import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..auth import generate_private_key_pem, looks_like_jwt, public_key_pem, verify_token
from ..errors import AuthError, CodaError
from .store import FAULT_KINDS, Job, Qpu, Store, StoreError

__all__ = ["DEFAULT_API_PREFIX", "DevCloud", "create_app", "devcloud_of"]

log = logging.getLogger(__name__)

#: Where the cloud serves the node API.
DEFAULT_API_PREFIX = "/api/internal/qpu"
#: Where the simulator serves its own admin API.
ADMIN_PREFIX = "/devcloud"
#: The IR targets a QPU can be registered with.
TARGETS = ("cz", "iswap", "pcz", "cnot")
#: Qubit count bounds of the IR.
MAX_QUBITS = 50
#: Longest ``error`` a failed result may carry.
WEBHOOK_ERROR_MAX_CHARS = 500
#: Shots put on a job when the submitter gives none.
DEFAULT_SHOTS = 1000
#: VPN health check interval handed out in ``vpn`` mode when the QPU sets none.
DEFAULT_VPN_CHECK_INTERVAL_SEC = 10
#: XADDs sent per Redis round trip by the bulk submit.
BULK_CHUNK_JOBS = 1000
#: Largest bulk submit accepted in one request.
MAX_BULK_JOBS = 200_000
#: Socket timeouts of the simulator's own Redis client.
REDIS_TIMEOUT_SEC = 5.0
#: Key in ``app.extensions`` holding the :class:`DevCloud`.
EXTENSION_KEY = "coda_devcloud"

_QPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_BITSTRING_RE = re.compile(r"^[01]+$")
_STREAM_FIELDS = ("job_id", "callback_url", "ir_json", "shots")

Reply = tuple[Response, int]
JsonMap = dict[str, Any]


class DevCloud:
    """What every route shares: the store, the cloud's Redis, and settings."""

    def __init__(
        self,
        store: Store,
        *,
        redis_url: str | None,
        redis_client: redis.Redis | None,
        public_base_url: str | None,
        api_prefix: str,
        accept_unknown_jobs: bool,
    ) -> None:
        self.store = store
        self.redis_url = redis_url
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.api_prefix = api_prefix
        self.accept_unknown_jobs = accept_unknown_jobs
        self._redis = redis_client
        self._redis_lock = threading.Lock()

    def redis(self) -> redis.Redis:
        """The cloud's Redis client, made on first use; a 503 when none is configured."""
        with self._redis_lock:
            if self._redis is None:
                if not self.redis_url:
                    raise StoreError(503, "the simulator has no cloud Redis (start it with --redis-url)")
                self._redis = redis.Redis.from_url(
                    self.redis_url,
                    decode_responses=True,
                    socket_timeout=REDIS_TIMEOUT_SEC,
                    socket_connect_timeout=REDIS_TIMEOUT_SEC,
                )
            return self._redis

    def has_redis(self) -> bool:
        """Whether a cloud Redis is configured."""
        return bool(self.redis_url) or self._redis is not None

    def base_url(self) -> str:
        """The cloud's base URL: configured, or as the current request sees it."""
        return self.public_base_url or request.host_url.rstrip("/")

    def path(self, name: str) -> str:
        """One node API path, e.g. ``/api/internal/qpu/heartbeat``."""
        return f"{self.api_prefix}/{name}"


def devcloud_of(app: Flask) -> DevCloud:
    """The :class:`DevCloud` behind an app made by :func:`create_app`."""
    cloud: DevCloud = app.extensions[EXTENSION_KEY]
    return cloud


def _cloud() -> DevCloud:
    return devcloud_of(current_app)


def _fail(status: int, message: str) -> StoreError:
    return StoreError(status, message)


def _reply(body: Mapping[str, Any], status: int = 200) -> Reply:
    return jsonify(body), status


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# -- request parsing --------------------------------------------------------------


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _fail(401, "missing bearer token")
    return value.strip()


def _node_json() -> JsonMap:
    """The JSON object body of a node request; the cloud wants ``application/json``."""
    if not request.is_json:
        raise _fail(400, "Content-Type must be application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _fail(400, "request body must be a JSON object")
    return body


def _admin_json() -> JsonMap:
    """The JSON object body of an admin request; an empty body is ``{}``."""
    if not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise _fail(400, "request body must be a JSON object")
    return body


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _query_bool(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise _fail(400, f"query parameter {name} must be true or false")


def _opt(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """An optional admin field of one type (bools are never ints)."""
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(400, f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise _fail(400, f"{name} has the wrong type")
    return value


@functools.lru_cache(maxsize=1024)
def _unverified_sub(token: str) -> str | None:
    """The ``sub`` claim without any check (cached: each request asks twice)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


# -- protocol checks -----------------------------------------------------------------


def _check_edges(value: Any, num_qubits: int) -> list[list[int]] | None:
    """A connectivity edge list that fits ``num_qubits``; 400 otherwise."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail(400, "connectivity must be a list of [a, b] qubit pairs or null")
    edges: list[list[int]] = []
    for index, edge in enumerate(value):
        if not isinstance(edge, list) or len(edge) != 2 or not all(_is_int(q) for q in edge):
            raise _fail(400, f"connectivity edge {index} must be a pair of qubit indices, got {edge!r}")
        a, b = edge
        if not (0 <= a < num_qubits and 0 <= b < num_qubits):
            raise _fail(
                400,
                f"connectivity edge {index} {edge!r} is outside qubits 0..{num_qubits - 1} "
                f"(num_qubits {num_qubits})",
            )
        if a == b:
            raise _fail(400, f"connectivity edge {index} {edge!r} joins a qubit to itself")
        edges.append([a, b])
    return edges


def _check_connect_body(body: JsonMap, qpu: Qpu) -> tuple[str, list[list[int]] | None]:
    fingerprint = body.get("machine_fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint.strip():
        raise _fail(400, "machine_fingerprint is required and must be a non-empty string")
    return fingerprint, _check_edges(body.get("connectivity"), qpu.num_qubits)


def _check_heartbeat_body(body: JsonMap, qpu: Qpu) -> list[list[int]] | None:
    current = body.get("current_job")
    if current is not None and not isinstance(current, str):
        raise _fail(400, "current_job must be a job id string or null")
    last = body.get("last_job_at")
    if last is not None:
        if not isinstance(last, str):
            raise _fail(400, "last_job_at must be an ISO-8601 time string or null")
        try:
            parsed = datetime.fromisoformat(last)
        except ValueError:
            raise _fail(400, f"last_job_at {last!r} is not an ISO-8601 time") from None
        if parsed.tzinfo is None:
            raise _fail(400, f"last_job_at {last!r} has no UTC offset")
    if not isinstance(body.get("redis_healthy"), bool):
        raise _fail(400, "redis_healthy is required and must be true or false")
    return _check_edges(body.get("connectivity"), qpu.num_qubits)


def _check_webhook_body(body: JsonMap, job_id: str) -> list[str]:
    """Hard rules of PROTOCOL.md section 5 (400 when broken); returns softer problems."""
    for name, value in body.items():
        if value is None:
            raise _fail(400, f"field {name!r} is null; fields that do not apply must be left out")
    if body.get("job_id") != job_id:
        raise _fail(400, f"job_id {body.get('job_id')!r} does not match the callback's job {job_id!r}")
    status = body.get("status")
    problems: list[str] = []
    if status == "completed":
        counts = body.get("counts")
        if not isinstance(counts, dict):
            raise _fail(400, "a completed result needs counts, a mapping of bitstring to count")
        for key, count in counts.items():
            if not _BITSTRING_RE.match(key):
                raise _fail(400, f"counts key {key!r} is not a bitstring")
            if not _is_int(count) or count < 0:
                raise _fail(400, f"counts[{key!r}] must be a non-negative integer")
        duration = body.get("execution_time_ms")
        if not _is_number(duration) or duration < 0:
            raise _fail(400, "a completed result needs execution_time_ms, a non-negative number")
        shots = body.get("shots_completed")
        if not _is_int(shots) or shots < 0:
            raise _fail(400, "a completed result needs shots_completed, a non-negative integer")
        if len({len(k) for k in counts}) > 1:
            problems.append("counts keys differ in length")
        if sum(counts.values()) != shots:
            problems.append(f"counts sum to {sum(counts.values())}, not shots_completed {shots}")
        if "error" in body:
            problems.append("field 'error' does not apply to a completed result")
    elif status == "failed":
        error = body.get("error")
        if not isinstance(error, str) or not error:
            raise _fail(400, "a failed result needs error, a non-empty string")
        if len(error) > WEBHOOK_ERROR_MAX_CHARS:
            raise _fail(400, f"error is {len(error)} characters; at most {WEBHOOK_ERROR_MAX_CHARS} allowed")
        problems.extend(
            f"field {name!r} does not apply to a failed result"
            for name in ("counts", "execution_time_ms", "shots_completed")
            if name in body
        )
    else:
        raise _fail(400, f"status must be 'completed' or 'failed', got {status!r}")
    known = {"job_id", "status", "counts", "execution_time_ms", "shots_completed", "error"}
    problems.extend(f"unknown field {name!r}" for name in body if name not in known)
    return problems


def _expect_problems(expect: Mapping[str, Any] | None, body: Mapping[str, Any]) -> list[str]:
    """How a result differs from what the submitter said it should be."""
    if not expect:
        return []
    problems: list[str] = []
    for name in ("status", "counts", "shots_completed"):
        if name in expect and body.get(name) != expect[name]:
            problems.append(f"{name} is {body.get(name)!r}, expected {expect[name]!r}")
    needle = expect.get("error_contains")
    if needle is not None and needle not in str(body.get("error", "")):
        problems.append(f"error {body.get('error')!r} does not contain {needle!r}")
    return problems


# -- the node API -------------------------------------------------------------------------

NodeHandler = Callable[[JsonMap], tuple[int, JsonMap]]


def _node_call(kind: str, handler: NodeHandler, *, job_id: str | None = None) -> Reply:
    """Run one node request through the fault windows, then record it.

    ``handler`` fills the event it gets (``qpu_id``, ``accepted``, ...)
    and returns the status and body, or raises :class:`StoreError`.
    """
    cloud = _cloud()
    event: JsonMap = {"received_at": time.time(), "accepted": False, "fault": False}
    if job_id is not None:
        event["job_id"] = job_id
    header = request.headers.get("Authorization", "")
    hint = _unverified_sub(header[7:]) if header[:7].lower() == "bearer " else None
    fault = cloud.store.take_fault(kind, job_id=job_id, qpu_id=hint)
    if fault is not None and fault.delay_sec > 0:
        time.sleep(fault.delay_sec)
    if fault is not None and fault.status is not None and not fault.lost_response:
        status, body = fault.status, {"error": f"injected fault: HTTP {fault.status}"}
        event.update(fault=True, qpu_id=hint, body=request.get_json(silent=True))
    else:
        try:
            status, body = handler(event)
        except StoreError as exc:
            status, body = exc.status, {"error": exc.message}
        if fault is not None and fault.status is not None:
            status, body = fault.status, {"error": f"injected fault: HTTP {fault.status} (response lost)"}
            event["fault"] = True
    event.update(status=status, error=body.get("error"))
    if kind != "health":
        cloud.store.record(kind, event)
    return _reply(body, status)


def _bundle(qpu: Qpu, private_key_pem: str | None) -> JsonMap:
    """The connect answer of PROTOCOL.md 1.1; the key only at provisioning."""
    cloud = _cloud()
    base = cloud.base_url()
    vpn_mode = qpu.connection_mode == "vpn"
    probes = qpu.vpn.get("probe_targets") or [f"{base}{cloud.path('health')}"]
    interval = qpu.vpn.get("check_interval_sec") or DEFAULT_VPN_CHECK_INTERVAL_SEC
    bundle: JsonMap = {
        "qpu_id": qpu.qpu_id,
        "qpu_display_name": qpu.display_name,
        "native_gate_set": qpu.native_gate_set,
        "num_qubits": qpu.num_qubits,
        "jwt_key_id": qpu.key_id,
        "redis_url": qpu.redis_url or cloud.redis_url or "",
        "cloud_base_url": base,
        "connect_path": cloud.path("connect"),
        "register_path": cloud.path("register"),
        "heartbeat_path": cloud.path("heartbeat"),
        "webhook_path": cloud.path("webhook"),
        "stream_key": f"qpu:{qpu.qpu_id}:jobs",
        "webhook_url": f"{base}{cloud.path('webhook')}",
        "vpn": {
            "required": vpn_mode,
            "interface_hint": qpu.vpn.get("interface_hint") if vpn_mode else None,
            "check_interval_sec": interval if vpn_mode else None,
            "probe_targets": list(probes) if vpn_mode else [],
            "client_profile_ovpn": qpu.vpn.get("client_profile_ovpn") if vpn_mode else None,
        },
        "connection_mode": qpu.connection_mode,
        "issued_at": _now_iso(),
        "connect_id": uuid.uuid4().hex,
    }
    if private_key_pem is not None:
        bundle["jwt_private_key"] = private_key_pem
    return bundle


def _authenticate(token: str, *, unknown_status: int) -> Qpu:
    """The QPU a node JWT belongs to, after checking signature, kid, sub and expiry."""
    store = _cloud().store
    sub = _unverified_sub(token)
    if sub is None:
        raise _fail(401, "bearer is not a readable JWT with a sub claim")
    qpu = store.get_qpu(sub)
    if qpu is None:
        raise _fail(unknown_status, f"QPU {sub!r} is not registered")
    if qpu.public_key_pem is None or qpu.key_id is None:
        raise _fail(unknown_status, f"QPU {sub!r} has not been provisioned yet")
    try:
        verify_token(token, qpu.public_key_pem, expected_kid=qpu.key_id, expected_sub=qpu.qpu_id)
    except AuthError as exc:
        raise _fail(401, str(exc)) from None
    return qpu


def _connect(event: JsonMap) -> tuple[int, JsonMap]:
    store = _cloud().store
    bearer = _bearer()
    if looks_like_jwt(bearer):
        event["mode"] = "reconnect"
        qpu = _authenticate(bearer, unknown_status=409)
        event.update(qpu_id=qpu.qpu_id, jwt_valid=True)
        body = _node_json()
        fingerprint, connectivity = _check_connect_body(body, qpu)
        event["fingerprint"] = fingerprint
        if fingerprint != qpu.fingerprint:
            raise _fail(401, "machine fingerprint does not match the machine this QPU was provisioned on")
        store.note_reconnect(qpu.qpu_id, connectivity)
        event["accepted"] = True
        return 200, _bundle(qpu, None)
    event["mode"] = "provision"
    qpu_id = store.check_token(bearer)
    event["qpu_id"] = qpu_id
    registered = store.get_qpu(qpu_id)
    if registered is None:
        raise _fail(409, f"QPU {qpu_id!r} is not registered")
    body = _node_json()
    fingerprint, connectivity = _check_connect_body(body, registered)
    event["fingerprint"] = fingerprint
    private_pem = generate_private_key_pem()
    qpu = store.provision(
        bearer,
        fingerprint=fingerprint,
        key_id=store.next_key_id(qpu_id),
        public_key_pem=public_key_pem(private_pem),
        connectivity=connectivity,
    )
    event.update(accepted=True, key_id=qpu.key_id)
    return 200, _bundle(qpu, private_pem)


def _heartbeat(event: JsonMap) -> tuple[int, JsonMap]:
    event["jwt_valid"] = False
    qpu = _authenticate(_bearer(), unknown_status=401)
    event.update(qpu_id=qpu.qpu_id, jwt_valid=True)
    body = _node_json()
    event["body"] = body
    connectivity = _check_heartbeat_body(body, qpu)
    if connectivity is not None:
        _cloud().store.update_qpu(qpu.qpu_id, connectivity=connectivity)
    event["accepted"] = True
    return 200, {"ok": True, "qpu_id": qpu.qpu_id}


def _webhook(event: JsonMap, job_id: str) -> tuple[int, JsonMap]:
    cloud = _cloud()
    event["jwt_valid"] = False
    qpu = _authenticate(_bearer(), unknown_status=401)
    event.update(qpu_id=qpu.qpu_id, jwt_valid=True)
    body = _node_json()
    event["body"] = body
    problems = _check_webhook_body(body, job_id)
    job = cloud.store.get_job(job_id, deep=False)
    if job is None:
        if not cloud.accept_unknown_jobs:
            raise _fail(404, f"job {job_id!r} is not known to this cloud")
        job = Job(
            job_id=job_id, qpu_id=qpu.qpu_id, callback_url=request.base_url, fields={}, submitted_at=None
        )
    elif job.qpu_id != qpu.qpu_id:
        raise _fail(403, f"job {job_id!r} belongs to QPU {job.qpu_id!r}, not {qpu.qpu_id!r}")
    counts = body.get("counts")
    if job.measurements is not None and isinstance(counts, dict):
        problems.extend(
            f"counts key {key!r} has {len(key)} bits, the circuit measures {job.measurements}"
            for key in counts
            if len(key) != job.measurements
        )
    delivery = cloud.store.deliver(
        job,
        {
            "received_at": event["received_at"],
            "qpu_id": qpu.qpu_id,
            "body": body,
            "problems": problems,
            "expect_problems": _expect_problems(job.expect, body),
        },
    )
    event.update(
        accepted=True,
        duplicate=delivery["duplicate"],
        content_mismatch=delivery["content_mismatch"],
        problems=problems,
    )
    return 200, {"ok": True, "job_id": job_id, "duplicate": delivery["duplicate"]}


def _node_blueprint(prefix: str) -> Blueprint:
    bp = Blueprint("devcloud_node", __name__, url_prefix=prefix)

    @bp.post("/connect")
    def connect() -> Reply:
        return _node_call("connect", _connect)

    @bp.post("/heartbeat")
    def heartbeat() -> Reply:
        return _node_call("heartbeat", _heartbeat)

    @bp.post("/webhook/<job_id>")
    def webhook(job_id: str) -> Reply:
        return _node_call("webhook", lambda event: _webhook(event, job_id), job_id=job_id)

    @bp.route("/health", methods=["GET", "HEAD"])
    def health() -> Reply:
        return _node_call("health", lambda event: (200, {"ok": True}))

    return bp


# -- the admin API: QPUs, tokens, recorded requests ---------------------------------------

admin = Blueprint("devcloud_admin", __name__, url_prefix=ADMIN_PREFIX)


def _without_password(url: str | None) -> str | None:
    """A Redis URL fit to show: any password replaced by ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


@admin.get("")
def info() -> Reply:
    """What this simulator is and where it points."""
    cloud = _cloud()
    redis_ok: bool | None = None
    if cloud.has_redis():
        try:
            redis_ok = bool(cloud.redis().ping())
        except redis.RedisError:
            redis_ok = False
    return _reply(
        {
            "ok": True,
            "base_url": cloud.base_url(),
            "api_prefix": cloud.api_prefix,
            "redis_url": _without_password(cloud.redis_url),
            "redis_ok": redis_ok,
            "qpus": len(cloud.store.list_qpus()),
            "accept_unknown_jobs": cloud.accept_unknown_jobs,
        }
    )


def _vpn_settings(data: JsonMap) -> JsonMap:
    vpn = _opt(data, "vpn", dict, {})
    settings: JsonMap = {
        "interface_hint": _opt(vpn, "interface_hint", str),
        "check_interval_sec": _opt(vpn, "check_interval_sec", int),
        "probe_targets": _opt(vpn, "probe_targets", list, []),
        "client_profile_ovpn": _opt(vpn, "client_profile_ovpn", str),
    }
    if data.get("client_profile_ovpn") is not None:
        settings["client_profile_ovpn"] = _opt(data, "client_profile_ovpn", str)
    if not all(isinstance(t, str) for t in settings["probe_targets"]):
        raise _fail(400, "vpn.probe_targets must be a list of URLs")
    return settings


@admin.post("/qpus")
def create_qpu() -> Reply:
    """Register a QPU (``replace`` resets an existing one, key and machine included)."""
    data = _admin_json()
    qpu_id = data.get("qpu_id")
    if not isinstance(qpu_id, str) or not _QPU_ID_RE.match(qpu_id):
        raise _fail(400, "qpu_id must be 1 to 128 letters, digits or ._:- characters")
    name = data.get("display_name", data.get("qpu_display_name")) or qpu_id
    gate_set = _opt(data, "native_gate_set", str, "cz")
    if gate_set not in TARGETS:
        raise _fail(400, f"native_gate_set must be one of {', '.join(TARGETS)}")
    num_qubits = _opt(data, "num_qubits", int, 5)
    if not 1 <= num_qubits <= MAX_QUBITS:
        raise _fail(400, f"num_qubits must be between 1 and {MAX_QUBITS}")
    mode = _opt(data, "connection_mode", str, "https")
    if mode not in ("vpn", "https"):
        raise _fail(400, "connection_mode must be 'vpn' or 'https'")
    qpu = Qpu(
        qpu_id=qpu_id,
        display_name=str(name),
        native_gate_set=gate_set,
        num_qubits=num_qubits,
        connection_mode=mode,
        vpn=_vpn_settings(data),
        redis_url=_opt(data, "redis_url", str),
    )
    _cloud().store.add_qpu(qpu, replace=bool(_opt(data, "replace", bool, False)))
    return _reply(qpu.view(), 201)


@admin.get("/qpus")
def list_qpus() -> Reply:
    return _reply({"qpus": [q.view() for q in _cloud().store.list_qpus()]})


@admin.get("/qpus/<qpu_id>")
def show_qpu(qpu_id: str) -> Reply:
    return _reply(_cloud().store.require_qpu(qpu_id).view())


@admin.delete("/qpus/<qpu_id>")
def delete_qpu(qpu_id: str) -> Reply:
    return _reply({"qpu_id": qpu_id, "deleted": _cloud().store.delete_qpu(qpu_id)})


@admin.post("/tokens")
def mint_token() -> Reply:
    """A one-time node token; a zero or negative ``expires_in_sec`` mints an expired one."""
    data = _admin_json()
    qpu_id = _opt(data, "qpu_id", str)
    if qpu_id is None:
        raise _fail(400, "qpu_id is required")
    expires = _opt(data, "expires_in_sec", (int, float))
    token, record = _cloud().store.mint_token(qpu_id, expires_in_sec=expires)
    return _reply(dict(record.view(), token=token), 201)


@admin.get("/tokens")
def list_tokens() -> Reply:
    tokens = _cloud().store.list_tokens(request.args.get("qpu_id"))
    return _reply({"tokens": [t.view() for t in tokens]})


@admin.post("/tokens/revoke")
def revoke_token() -> Reply:
    """Revoke by ``token`` (the value) or ``token_id`` (as listed)."""
    data = _admin_json()
    token, tid = _opt(data, "token", str), _opt(data, "token_id", str)
    if token is None and tid is None:
        raise _fail(400, "give token or token_id")
    return _reply(_cloud().store.revoke_token(token=token, tid=tid).view())


def _events(kind: str, **where: Any) -> list[JsonMap]:
    return _cloud().store.list_events(kind, accepted=_query_bool("accepted"), **where)


@admin.get("/heartbeats")
def list_heartbeats() -> Reply:
    return _reply({"heartbeats": _events("heartbeat", qpu_id=request.args.get("qpu_id"))})


@admin.get("/webhooks")
def list_webhooks() -> Reply:
    where = {"qpu_id": request.args.get("qpu_id"), "job_id": request.args.get("job_id")}
    return _reply({"webhooks": _events("webhook", **where)})


@admin.get("/connects")
def list_connects() -> Reply:
    where = {"qpu_id": request.args.get("qpu_id"), "mode": request.args.get("mode")}
    return _reply({"connects": _events("connect", **where)})


# -- the admin API: jobs --------------------------------------------------------------------


def _circuit(data: JsonMap, qpu: Qpu) -> tuple[str, bool]:
    """The ``ir_json`` text of a submit, and whether it gets validated.

    ``ir`` (an object) and ``qasm`` are validated by default; ``ir_json``
    is the raw escape hatch for bad-input tests and is passed through as is
    unless ``validate`` is true.
    """
    sources = [name for name in ("ir", "ir_json", "qasm") if data.get(name) is not None]
    if len(sources) != 1:
        raise _fail(400, "give exactly one of ir, ir_json, qasm")
    source = sources[0]
    validate = _opt(data, "validate", bool, source != "ir_json")
    if source == "qasm":
        from ..qasm import qasm_to_ir

        text = _opt(data, "qasm", str)
        try:
            return qasm_to_ir(text, qpu.native_gate_set).to_json(), validate
        except (CodaError, ValueError) as exc:
            raise _fail(400, f"qasm: {exc}") from None
    if source == "ir":
        ir = data["ir"]
        if validate and not isinstance(ir, dict):
            raise _fail(400, "ir must be a JSON object (use ir_json for raw text)")
        return json.dumps(ir, separators=(",", ":")), validate
    return _opt(data, "ir_json", str), validate


def _validate_circuit(ir_json: str, qpu: Qpu) -> None:
    from ..ir import parse_ir

    try:
        parse_ir(ir_json)
    except (CodaError, ValueError, TypeError) as exc:
        raise _fail(400, str(exc) or type(exc).__name__) from None
    target = json.loads(ir_json).get("target")
    if target != qpu.native_gate_set:
        raise _fail(
            400, f"circuit target {target!r} is not QPU {qpu.qpu_id!r}'s gate set {qpu.native_gate_set!r}"
        )


def _measured(ir_json: str) -> int | None:
    try:
        measurements = json.loads(ir_json).get("measurements")
    except (ValueError, AttributeError):
        return None
    return len(measurements) if isinstance(measurements, list) else None


def _shots(data: JsonMap, validate: bool) -> tuple[str, int | None]:
    shots = data.get("shots", DEFAULT_SHOTS)
    if isinstance(shots, bool) or not isinstance(shots, int | str):
        raise _fail(400, "shots must be an integer (or a raw string for bad-input tests)")
    if isinstance(shots, int) and validate and shots < 1:
        raise _fail(400, "shots must be at least 1")
    return str(shots), shots if isinstance(shots, int) else None


def _expectation(data: JsonMap, measured: int | None, shots: int | None) -> JsonMap | None:
    """The submitter's expected result; ``"noop"`` means the no-op executor's all-zero counts."""
    expect = data.get("expect")
    if expect == "noop":
        if measured is None or shots is None:
            raise _fail(400, "expect 'noop' needs a readable circuit and integer shots")
        return {"status": "completed", "counts": {"0" * measured: shots}, "shots_completed": shots}
    if expect is not None and not isinstance(expect, dict):
        raise _fail(400, "expect must be an object or 'noop'")
    return expect


class _Submission:
    """One checked submit request: the stream fields of each job, minus the job id."""

    def __init__(self, data: JsonMap) -> None:
        cloud = _cloud()
        qpu_id = _opt(data, "qpu_id", str)
        if qpu_id is None:
            raise _fail(400, "qpu_id is required")
        self.qpu = cloud.store.require_qpu(qpu_id)
        self.ir_json, validate = _circuit(data, self.qpu)
        if validate:
            _validate_circuit(self.ir_json, self.qpu)
        self.measured = _measured(self.ir_json)
        self.shots, shots_int = _shots(data, validate)
        self.expect = _expectation(data, self.measured, shots_int)
        self.callback_base = _opt(data, "callback_url", str) or f"{cloud.base_url()}{cloud.path('webhook')}"
        self.custom_callback = data.get("callback_url") is not None
        extra = _opt(data, "extra_fields", dict, {})
        self.extra = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()}
        self.omit = [str(name) for name in _opt(data, "omit_fields", list, [])]
        self.stream_key = f"qpu:{self.qpu.qpu_id}:jobs"

    def job(self, job_id: str) -> Job:
        """The record (with stream fields) of one job of this submission."""
        callback = self.callback_base if self.custom_callback else f"{self.callback_base}/{job_id}"
        fields = {"job_id": job_id, "callback_url": callback, "ir_json": self.ir_json, "shots": self.shots}
        fields.update(self.extra)
        for name in self.omit:
            fields.pop(name, None)
        if not fields:
            raise _fail(400, "a stream entry needs at least one field")
        return Job(
            job_id=job_id,
            qpu_id=self.qpu.qpu_id,
            callback_url=callback,
            fields=fields,
            submitted_at=None,
            expect=self.expect,
            measurements=self.measured,
        )


def _redis_error(exc: redis.RedisError) -> StoreError:
    return _fail(503, f"cloud Redis unavailable: {type(exc).__name__}: {exc}")


@admin.post("/jobs")
def submit_job() -> Reply:
    """XADD one job to ``qpu:{qpu_id}:jobs`` with the four string fields."""
    cloud = _cloud()
    data = _admin_json()
    plan = _Submission(data)
    job_id = _opt(data, "job_id", str) or f"job-{uuid.uuid4().hex}"
    job = plan.job(job_id)
    client = cloud.redis()
    new = cloud.store.add_jobs([job])
    cloud.store.set_submitted([job_id], time.time())
    try:
        stream_id = client.xadd(plan.stream_key, job.fields)  # type: ignore[arg-type]
    except redis.RedisError as exc:
        cloud.store.forget_jobs(new)
        raise _redis_error(exc) from None
    cloud.store.add_stream_ids({job_id: str(stream_id)})
    body = {
        "job_id": job_id,
        "stream_id": stream_id,
        "stream_key": plan.stream_key,
        "callback_url": job.callback_url,
    }
    return _reply(body, 201)


@admin.post("/jobs/bulk")
def submit_bulk() -> Reply:
    """XADD ``count`` copies of one circuit through pipelines, stamping each job's XADD time."""
    cloud = _cloud()
    data = _admin_json()
    count = _opt(data, "count", int)
    if count is None or not 1 <= count <= MAX_BULK_JOBS:
        raise _fail(400, f"count must be between 1 and {MAX_BULK_JOBS}")
    plan = _Submission(data)
    prefix = _opt(data, "job_id_prefix", str) or f"bulk-{uuid.uuid4().hex[:10]}-"
    jobs = [plan.job(f"{prefix}{index}") for index in range(count)]
    client = cloud.redis()
    cloud.store.add_jobs(jobs)
    started = time.time()
    done = 0
    try:
        for offset in range(0, count, BULK_CHUNK_JOBS):
            chunk = jobs[offset : offset + BULK_CHUNK_JOBS]
            pipe = client.pipeline(transaction=False)
            for job in chunk:
                pipe.xadd(plan.stream_key, job.fields)  # type: ignore[arg-type]
            cloud.store.set_submitted([j.job_id for j in chunk], time.time())
            stream_ids = pipe.execute()
            cloud.store.add_stream_ids({j.job_id: str(s) for j, s in zip(chunk, stream_ids, strict=True)})
            done += len(chunk)
    except redis.RedisError as exc:
        cloud.store.forget_jobs(j.job_id for j in jobs[done:])
        raise _fail(503, f"cloud Redis failed after {done} of {count} jobs: {type(exc).__name__}") from None
    body = {
        "job_ids": [j.job_id for j in jobs],
        "count": count,
        "stream_key": plan.stream_key,
        "elapsed_ms": round((time.time() - started) * 1000.0, 3),
    }
    return _reply(body, 201)


@admin.get("/jobs")
def list_jobs() -> Reply:
    """Every job with its result; ``full=true`` adds the stream fields and every delivery."""
    full = bool(_query_bool("full"))
    views = _cloud().store.job_views(request.args.get("qpu_id"), full=full, deliveries=full)
    return _reply({"jobs": views})


@admin.get("/jobs/<job_id>")
def show_job(job_id: str) -> Reply:
    """One job, its deliveries, and its status hash and cancel key read from the cloud's Redis."""
    cloud = _cloud()
    job = cloud.store.get_job(job_id)
    if job is None:
        raise _fail(404, f"job {job_id!r} is not known to this cloud")
    view = job.view()
    try:
        client = cloud.redis()
        view["status"] = client.hgetall(f"qpu:job:{job_id}:status")
        view["cancel_key_set"] = bool(client.exists(f"qpu:job:cancelled:{job_id}"))
    except (redis.RedisError, StoreError) as exc:
        view.update(status=None, cancel_key_set=None, redis_error=str(exc))
    return _reply(view)


@admin.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Reply:
    """Create ``qpu:job:cancelled:{job_id}``, the cloud's cancel signal (any job id works)."""
    cloud = _cloud()
    key = f"qpu:job:cancelled:{job_id}"
    try:
        cloud.redis().set(key, "1")
    except redis.RedisError as exc:
        raise _redis_error(exc) from None
    cloud.store.mark_cancel_requested(job_id)
    return _reply({"job_id": job_id, "cancel_key": key})


@admin.get("/results")
def list_results() -> Reply:
    """Job id to the first accepted result body (null while none arrived)."""
    return _reply({"results": _cloud().store.results(request.args.get("qpu_id"))})


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@admin.get("/stats")
def stats() -> Reply:
    """Job totals and XADD-to-webhook latency, for benchmarks."""
    views = _cloud().store.job_views(request.args.get("qpu_id"), deliveries=False)
    delivered = [v for v in views if v["delivered"]]
    latencies = sorted(v["latency_ms"] for v in delivered if v["latency_ms"] is not None)
    latency: JsonMap = {"count": len(latencies)}
    if latencies:
        latency.update(
            min=latencies[0],
            p50=_percentile(latencies, 0.50),
            p90=_percentile(latencies, 0.90),
            p99=_percentile(latencies, 0.99),
            max=latencies[-1],
            mean=round(sum(latencies) / len(latencies), 3),
        )
    body = {
        "jobs": len(views),
        "delivered": len(delivered),
        "undelivered": len(views) - len(delivered),
        "completed": sum(1 for v in delivered if v["result"].get("status") == "completed"),
        "failed": sum(1 for v in delivered if v["result"].get("status") == "failed"),
        "duplicate_deliveries": sum(v["delivery_count"] - 1 for v in delivered),
        "content_mismatches": sum(1 for v in views if v["content_mismatch"]),
        "expect_failures": sum(1 for v in views if v["expect_ok"] is False),
        "latency_ms": latency,
    }
    return _reply(body)


# -- the admin API: faults and reset ---------------------------------------------------------


@admin.post("/faults")
def add_fault() -> Reply:
    """Answer ``status`` on ``kind`` requests for ``seconds`` or the next ``count`` of them."""
    data = _admin_json()
    kind = _opt(data, "kind", str)
    if kind not in FAULT_KINDS:
        raise _fail(400, f"kind must be one of {', '.join(FAULT_KINDS)}")
    status = _opt(data, "status", int)
    if status is not None and not 400 <= status <= 599:
        raise _fail(400, "status must be a 4xx or 5xx code")
    count = _opt(data, "count", int)
    if count is not None and count < 1:
        raise _fail(400, "count must be at least 1")
    fault = _cloud().store.add_fault(
        kind,
        status,
        seconds=_opt(data, "seconds", (int, float)),
        count=count,
        job_id=_opt(data, "job_id", str),
        qpu_id=_opt(data, "qpu_id", str),
        delay_sec=float(_opt(data, "delay_sec", (int, float), 0.0)),
        lost_response=bool(_opt(data, "lost_response", bool, False)),
    )
    return _reply(fault.view(), 201)


@admin.get("/faults")
def list_faults() -> Reply:
    return _reply({"faults": [f.view() for f in _cloud().store.list_faults()]})


@admin.delete("/faults")
def clear_faults() -> Reply:
    return _reply({"cleared": _cloud().store.clear_faults()})


@admin.post("/faults/clear")
def clear_faults_post() -> Reply:
    return clear_faults()


@admin.post("/reset")
def reset() -> Reply:
    """Forget all state; with ``redis: true`` also delete the keys this simulator wrote."""
    cloud = _cloud()
    data = _admin_json()
    deleted = 0
    if _opt(data, "redis", bool, False):
        keys = [f"qpu:{q.qpu_id}:jobs" for q in cloud.store.list_qpus()]
        for job_id in cloud.store.results():
            keys += [f"qpu:job:{job_id}:status", f"qpu:job:cancelled:{job_id}"]
        try:
            client = cloud.redis()
            for offset in range(0, len(keys), BULK_CHUNK_JOBS):
                deleted += int(client.delete(*keys[offset : offset + BULK_CHUNK_JOBS]))
        except redis.RedisError as exc:
            raise _redis_error(exc) from None
    cloud.store.reset()
    return _reply({"ok": True, "redis_keys_deleted": deleted})


# -- the factory -------------------------------------------------------------------------------


def _json_error(exc: Exception) -> Reply:
    if isinstance(exc, StoreError):
        return _reply({"error": exc.message}, exc.status)
    if isinstance(exc, HTTPException):
        return _reply({"error": exc.description or exc.name}, exc.code or 500)
    log.exception("devcloud: unhandled error in %s %s", request.method, request.path)
    return _reply({"error": f"internal error ({type(exc).__name__})"}, 500)


def create_app(
    store: Store | None = None,
    *,
    redis_url: str | None = None,
    redis_client: redis.Redis | None = None,
    public_base_url: str | None = None,
    api_prefix: str = DEFAULT_API_PREFIX,
    accept_unknown_jobs: bool = False,
) -> Flask:
    """The simulator as a Flask app.

    ``redis_url`` is the cloud's Redis (job streams, status hashes, cancel
    keys) and the URL handed out in bundles; ``public_base_url`` replaces
    the request's own host as ``cloud_base_url`` and in callback URLs;
    ``accept_unknown_jobs`` records results for jobs the simulator did not
    submit instead of answering 404.
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
    )
    app.register_blueprint(_node_blueprint("/" + api_prefix.strip("/")))
    app.register_blueprint(admin)
    app.register_error_handler(StoreError, _json_error)
    app.register_error_handler(HTTPException, _json_error)
    app.register_error_handler(Exception, _json_error)
    return app
