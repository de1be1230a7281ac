"""The node-facing blueprint: connect, heartbeat, result webhook and health (PROTOCOL.md 1-5).

Each request goes through the injected fault windows first, then is recorded for tests to read back.
"""

from __future__ import annotations

import functools
import hmac
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import jwt
from flask import Blueprint, request

from ...cloud.signing import generate_private_key_pem, looks_like_jwt, public_key_pem, verify_token
from ...errors import AuthError
from .cloud import JsonMap, Reply, current_cloud, fail, reply
from .cloud_records import Job, Qpu
from .store_error import StoreError
from .validation import (
    bearer_token,
    check_connect_body,
    check_heartbeat_body,
    check_webhook_body,
    expect_problems,
    node_json,
)

__all__ = ["DEFAULT_VPN_CHECK_INTERVAL_SEC", "NodeHandler", "node_blueprint"]

#: VPN health check interval handed out in ``vpn`` mode when the QPU sets none.
DEFAULT_VPN_CHECK_INTERVAL_SEC = 10

NodeHandler = Callable[[JsonMap], tuple[int, JsonMap]]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@functools.lru_cache(maxsize=1024)
def _unverified_claim(token: str, name: str) -> object:
    """Claim ``name`` of ``token`` without any check; ``None`` if it has none or is no JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims.get(name) if isinstance(claims, dict) else None


def _unverified_sub(token: str) -> str | None:
    """The ``sub`` claim without any check."""
    sub = _unverified_claim(token, "sub")
    return sub if isinstance(sub, str) else None


def _node_call(kind: str, handler: NodeHandler, *, job_id: str | None = None) -> Reply:
    """Run one node request through the fault windows, then record it.

    ``handler`` fills the event it gets (``qpu_id``, ``accepted``, ...)
    and returns the status and body, or raises :class:`StoreError`.
    """
    cloud = current_cloud()
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
    return reply(body, status)


def _bundle(qpu: Qpu, private_key_pem: str | None) -> JsonMap:
    """The connect answer of PROTOCOL.md 1.1; the key only at provisioning."""
    cloud = current_cloud()
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
    store = current_cloud().store
    sub = _unverified_sub(token)
    if sub is None:
        raise fail(401, "bearer is not a readable JWT with a sub claim")
    qpu = store.get_qpu(sub)
    if qpu is None:
        raise fail(unknown_status, f"QPU {sub!r} is not registered")
    if qpu.public_key_pem is None or qpu.key_id is None:
        raise fail(unknown_status, f"QPU {sub!r} has not been provisioned yet")
    try:
        verify_token(token, qpu.public_key_pem, expected_kid=qpu.key_id, expected_sub=qpu.qpu_id)
    except AuthError as exc:
        raise fail(401, str(exc)) from None
    return qpu


def _connect(event: JsonMap) -> tuple[int, JsonMap]:
    store = current_cloud().store
    bearer = bearer_token()
    if looks_like_jwt(bearer):
        event["mode"] = "reconnect"
        qpu = _authenticate(bearer, unknown_status=409)
        event.update(qpu_id=qpu.qpu_id, jwt_valid=True)
        body = node_json()
        fingerprint, connectivity = check_connect_body(body, qpu)
        event["fingerprint"] = fingerprint
        if fingerprint != qpu.fingerprint:
            raise fail(401, "machine fingerprint does not match the machine this QPU was provisioned on")
        store.note_reconnect(qpu.qpu_id, connectivity)
        event["accepted"] = True
        return 200, _bundle(qpu, None)
    event["mode"] = "provision"
    qpu_id = store.check_token(bearer)
    event["qpu_id"] = qpu_id
    registered = store.get_qpu(qpu_id)
    if registered is None:
        raise fail(409, f"QPU {qpu_id!r} is not registered")
    body = node_json()
    fingerprint, connectivity = check_connect_body(body, registered)
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
    token = bearer_token()
    qpu = _authenticate(token, unknown_status=401)
    # when the node signed it (whole seconds): tells two heartbeats of one interval slot from a late one
    event.update(qpu_id=qpu.qpu_id, jwt_valid=True, iat=_unverified_claim(token, "iat"))
    body = node_json()
    event["body"] = body
    connectivity = check_heartbeat_body(body, qpu)
    if connectivity is not None:
        current_cloud().store.update_qpu(qpu.qpu_id, connectivity=connectivity)
    event["accepted"] = True
    return 200, {"ok": True, "qpu_id": qpu.qpu_id}


def _webhook(event: JsonMap, job_id: str) -> tuple[int, JsonMap]:
    cloud = current_cloud()
    event["jwt_valid"] = False
    qpu = _authenticate(bearer_token(), unknown_status=401)
    event.update(qpu_id=qpu.qpu_id, jwt_valid=True)
    body = node_json()
    event["body"] = body
    problems = check_webhook_body(body, job_id)
    job = cloud.store.get_job(job_id, deep=False)
    if job is None:
        if not cloud.accept_unknown_jobs:
            raise fail(404, f"job {job_id!r} is not known to this cloud")
        job = Job(
            job_id=job_id, qpu_id=qpu.qpu_id, callback_url=request.base_url, fields={}, submitted_at=None
        )
    elif job.qpu_id != qpu.qpu_id:
        raise fail(403, f"job {job_id!r} belongs to QPU {job.qpu_id!r}, not {qpu.qpu_id!r}")
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
            "expect_problems": expect_problems(job.expect, body),
        },
    )
    event.update(
        accepted=True,
        duplicate=delivery["duplicate"],
        content_mismatch=delivery["content_mismatch"],
        problems=problems,
    )
    return 200, {"ok": True, "job_id": job_id, "duplicate": delivery["duplicate"]}


def _protection() -> Reply | None:
    """A 401 for a request without every required header (as deployment protection answers), else None.

    The refusal is recorded with the names of the headers missing or wrong, never a value.
    """
    cloud = current_cloud()
    wrong = sorted(
        name
        for name, value in cloud.required_headers.items()
        if not hmac.compare_digest(request.headers.get(name, "").encode(), value.encode())
    )
    if not wrong:
        return None
    cloud.store.record(
        "protection",
        {"received_at": time.time(), "method": request.method, "path": request.path, "missing": wrong},
    )
    return reply({"error": "this deployment is protected: authentication required"}, 401)


def node_blueprint(prefix: str) -> Blueprint:
    bp = Blueprint("devcloud_node", __name__, url_prefix=prefix)
    bp.before_request(_protection)

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
