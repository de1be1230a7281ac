"""The admin blueprint under ``/devcloud``: QPUs, tokens, jobs, recorded requests, stats, faults, reset.

Unauthenticated on purpose: tests, the demo and the ``devcloud`` CLI drive the simulated cloud through it.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from flask import Blueprint, request

from .cloud import JsonMap, Reply, current_cloud, fail, redis_unavailable, reply
from .cloud_records import FAULT_KINDS, Qpu
from .job_submission import BULK_CHUNK_JOBS, xadd_bulk, xadd_one
from .store_error import StoreError
from .validation import admin_json, opt, query_bool

__all__ = ["ADMIN_PREFIX", "MAX_QUBITS", "TARGETS", "admin"]

#: Where the simulator serves its own admin API.
ADMIN_PREFIX = "/devcloud"
#: The IR targets a QPU can be registered with.
TARGETS = ("cz", "iswap", "pcz", "cnot")
#: Qubit count bounds of the IR.
MAX_QUBITS = 50

_QPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

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
    cloud = current_cloud()
    redis_ok: bool | None = None
    if cloud.has_redis():
        try:
            redis_ok = bool(cloud.redis().ping())
        except redis.RedisError:
            redis_ok = False
    return reply(
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
    vpn = opt(data, "vpn", dict, {})
    settings: JsonMap = {
        "interface_hint": opt(vpn, "interface_hint", str),
        "check_interval_sec": opt(vpn, "check_interval_sec", int),
        "probe_targets": opt(vpn, "probe_targets", list, []),
        "client_profile_ovpn": opt(vpn, "client_profile_ovpn", str),
    }
    if data.get("client_profile_ovpn") is not None:
        settings["client_profile_ovpn"] = opt(data, "client_profile_ovpn", str)
    if not all(isinstance(t, str) for t in settings["probe_targets"]):
        raise fail(400, "vpn.probe_targets must be a list of URLs")
    return settings


@admin.post("/qpus")
def create_qpu() -> Reply:
    """Register a QPU (``replace`` resets an existing one, key and machine included)."""
    data = admin_json()
    qpu_id = data.get("qpu_id")
    if not isinstance(qpu_id, str) or not _QPU_ID_RE.match(qpu_id):
        raise fail(400, "qpu_id must be 1 to 128 letters, digits or ._:- characters")
    name = data.get("display_name", data.get("qpu_display_name")) or qpu_id
    gate_set = opt(data, "native_gate_set", str, "cz")
    if gate_set not in TARGETS:
        raise fail(400, f"native_gate_set must be one of {', '.join(TARGETS)}")
    num_qubits = opt(data, "num_qubits", int, 5)
    if not 1 <= num_qubits <= MAX_QUBITS:
        raise fail(400, f"num_qubits must be between 1 and {MAX_QUBITS}")
    mode = opt(data, "connection_mode", str, "https")
    if mode not in ("vpn", "https"):
        raise fail(400, "connection_mode must be 'vpn' or 'https'")
    qpu = Qpu(
        qpu_id=qpu_id,
        display_name=str(name),
        native_gate_set=gate_set,
        num_qubits=num_qubits,
        connection_mode=mode,
        vpn=_vpn_settings(data),
        redis_url=opt(data, "redis_url", str),
    )
    current_cloud().store.add_qpu(qpu, replace=bool(opt(data, "replace", bool, False)))
    return reply(qpu.view(current_cloud().store.offline_after_sec), 201)


@admin.get("/qpus")
def list_qpus() -> Reply:
    store = current_cloud().store
    return reply({"qpus": [q.view(store.offline_after_sec) for q in store.list_qpus()]})


@admin.get("/qpus/<qpu_id>")
def show_qpu(qpu_id: str) -> Reply:
    store = current_cloud().store
    return reply(store.require_qpu(qpu_id).view(store.offline_after_sec))


@admin.delete("/qpus/<qpu_id>")
def delete_qpu(qpu_id: str) -> Reply:
    return reply({"qpu_id": qpu_id, "deleted": current_cloud().store.delete_qpu(qpu_id)})


@admin.post("/tokens")
def mint_token() -> Reply:
    """A one-time node token; a zero or negative ``expires_in_sec`` mints an expired one."""
    data = admin_json()
    qpu_id = opt(data, "qpu_id", str)
    if qpu_id is None:
        raise fail(400, "qpu_id is required")
    expires = opt(data, "expires_in_sec", (int, float))
    token, record = current_cloud().store.mint_token(qpu_id, expires_in_sec=expires)
    return reply(dict(record.view(), token=token), 201)


@admin.get("/tokens")
def list_tokens() -> Reply:
    tokens = current_cloud().store.list_tokens(request.args.get("qpu_id"))
    return reply({"tokens": [t.view() for t in tokens]})


@admin.post("/tokens/revoke")
def revoke_token() -> Reply:
    """Revoke by ``token`` (the value) or ``token_id`` (as listed)."""
    data = admin_json()
    token, tid = opt(data, "token", str), opt(data, "token_id", str)
    if token is None and tid is None:
        raise fail(400, "give token or token_id")
    return reply(current_cloud().store.revoke_token(token=token, tid=tid).view())


def _events(kind: str, **where: Any) -> list[JsonMap]:
    return current_cloud().store.list_events(kind, accepted=query_bool("accepted"), **where)


@admin.get("/heartbeats")
def list_heartbeats() -> Reply:
    return reply({"heartbeats": _events("heartbeat", qpu_id=request.args.get("qpu_id"))})


@admin.get("/webhooks")
def list_webhooks() -> Reply:
    where = {"qpu_id": request.args.get("qpu_id"), "job_id": request.args.get("job_id")}
    return reply({"webhooks": _events("webhook", **where)})


@admin.get("/refused")
def list_refused() -> Reply:
    """Node API requests the deployment protection (``--required-headers``) refused."""
    return reply({"refused": current_cloud().store.list_events("protection")})


@admin.get("/connects")
def list_connects() -> Reply:
    where = {"qpu_id": request.args.get("qpu_id"), "mode": request.args.get("mode")}
    return reply({"connects": _events("connect", **where)})


# -- the admin API: jobs --------------------------------------------------------------------


@admin.post("/jobs")
def submit_job() -> Reply:
    """XADD one job to ``qpu:{qpu_id}:jobs`` with the four string fields."""
    cloud = current_cloud()
    return reply(xadd_one(cloud, admin_json()), 201)


@admin.post("/jobs/bulk")
def submit_bulk() -> Reply:
    """XADD ``count`` copies of one circuit through pipelines, stamping each job's XADD time."""
    cloud = current_cloud()
    return reply(xadd_bulk(cloud, admin_json()), 201)


@admin.get("/jobs")
def list_jobs() -> Reply:
    """Every job with its result; ``full=true`` adds the stream fields and every delivery."""
    full = bool(query_bool("full"))
    views = current_cloud().store.job_views(request.args.get("qpu_id"), full=full, deliveries=full)
    return reply({"jobs": views})


@admin.get("/jobs/<job_id>")
def show_job(job_id: str) -> Reply:
    """One job, its deliveries, and its status hash and cancel key read from the cloud's Redis."""
    cloud = current_cloud()
    job = cloud.store.get_job(job_id)
    if job is None:
        raise fail(404, f"job {job_id!r} is not known to this cloud")
    view = job.view()
    try:
        client = cloud.redis()
        view["status"] = client.hgetall(f"qpu:job:{job_id}:status")
        view["cancel_key_set"] = bool(client.exists(f"qpu:job:cancelled:{job_id}"))
    except (redis.RedisError, StoreError) as exc:
        view.update(status=None, cancel_key_set=None, redis_error=str(exc))
    return reply(view)


@admin.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Reply:
    """Create ``qpu:job:cancelled:{job_id}``, the cloud's cancel signal (any job id works)."""
    cloud = current_cloud()
    key = f"qpu:job:cancelled:{job_id}"
    try:
        cloud.redis().set(key, "1")
    except redis.RedisError as exc:
        raise redis_unavailable(exc) from None
    cloud.store.mark_cancel_requested(job_id)
    return reply({"job_id": job_id, "cancel_key": key})


@admin.get("/results")
def list_results() -> Reply:
    """Job id to the first accepted result body (null while none arrived)."""
    return reply({"results": current_cloud().store.results(request.args.get("qpu_id"))})


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@admin.get("/stats")
def stats() -> Reply:
    """Job totals and XADD-to-webhook latency, for benchmarks."""
    views = current_cloud().store.job_views(request.args.get("qpu_id"), deliveries=False)
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
    return reply(body)


# -- the admin API: faults and reset ---------------------------------------------------------


@admin.post("/faults")
def add_fault() -> Reply:
    """Answer ``status`` on ``kind`` requests for ``seconds`` or the next ``count`` of them."""
    data = admin_json()
    kind = opt(data, "kind", str)
    if kind not in FAULT_KINDS:
        raise fail(400, f"kind must be one of {', '.join(FAULT_KINDS)}")
    status = opt(data, "status", int)
    if status is not None and not 400 <= status <= 599:
        raise fail(400, "status must be a 4xx or 5xx code")
    count = opt(data, "count", int)
    if count is not None and count < 1:
        raise fail(400, "count must be at least 1")
    fault = current_cloud().store.add_fault(
        kind,
        status,
        seconds=opt(data, "seconds", (int, float)),
        count=count,
        job_id=opt(data, "job_id", str),
        qpu_id=opt(data, "qpu_id", str),
        delay_sec=float(opt(data, "delay_sec", (int, float), 0.0)),
        lost_response=bool(opt(data, "lost_response", bool, False)),
    )
    return reply(fault.view(), 201)


@admin.get("/faults")
def list_faults() -> Reply:
    return reply({"faults": [f.view() for f in current_cloud().store.list_faults()]})


@admin.delete("/faults")
def clear_faults() -> Reply:
    return reply({"cleared": current_cloud().store.clear_faults()})


@admin.post("/faults/clear")
def clear_faults_post() -> Reply:
    return clear_faults()


@admin.post("/reset")
def reset() -> Reply:
    """Forget all state; with ``redis: true`` also delete the keys this simulator wrote."""
    cloud = current_cloud()
    data = admin_json()
    deleted = 0
    if opt(data, "redis", bool, False):
        keys = [f"qpu:{q.qpu_id}:jobs" for q in cloud.store.list_qpus()]
        for job_id in cloud.store.results():
            keys += [f"qpu:job:{job_id}:status", f"qpu:job:cancelled:{job_id}"]
        try:
            client = cloud.redis()
            for offset in range(0, len(keys), BULK_CHUNK_JOBS):
                deleted += int(client.delete(*keys[offset : offset + BULK_CHUNK_JOBS]))
        except redis.RedisError as exc:
            raise redis_unavailable(exc) from None
    cloud.store.reset()
    return reply({"ok": True, "redis_keys_deleted": deleted})
