"""Job submission for the admin API: check a submit request, build its stream entries, XADD them.

Jobs are recorded in the store before their XADD, so a result can never beat its job's record.
"""

from __future__ import annotations

import json
import time
import uuid

import redis

from ...circuits.ir import parse_ir
from ...circuits.qasm import qasm_to_ir
from ...errors import CodaError
from .cloud import DevCloud, JsonMap, fail, redis_unavailable
from .cloud_records import Job, Qpu
from .validation import opt

__all__ = ["BULK_CHUNK_JOBS", "DEFAULT_SHOTS", "MAX_BULK_JOBS", "Submission", "xadd_bulk", "xadd_one"]

#: Shots put on a job when the submitter gives none.
DEFAULT_SHOTS = 1000
#: XADDs sent per Redis round trip by the bulk submit.
BULK_CHUNK_JOBS = 1000
#: Largest bulk submit accepted in one request.
MAX_BULK_JOBS = 200_000


def _circuit(data: JsonMap, qpu: Qpu) -> tuple[str, bool]:
    """The ``ir_json`` text of a submit, and whether it gets validated.

    ``ir`` (an object) and ``qasm`` are validated by default; ``ir_json``
    is the raw escape hatch for bad-input tests and is passed through as is
    unless ``validate`` is true.
    """
    sources = [name for name in ("ir", "ir_json", "qasm") if data.get(name) is not None]
    if len(sources) != 1:
        raise fail(400, "give exactly one of ir, ir_json, qasm")
    source = sources[0]
    validate = opt(data, "validate", bool, source != "ir_json")
    if source == "qasm":
        text = opt(data, "qasm", str)
        try:
            return qasm_to_ir(text, qpu.native_gate_set).to_json(), validate
        except (CodaError, ValueError) as exc:
            raise fail(400, f"qasm: {exc}") from None
    if source == "ir":
        ir = data["ir"]
        if validate and not isinstance(ir, dict):
            raise fail(400, "ir must be a JSON object (use ir_json for raw text)")
        return json.dumps(ir, separators=(",", ":")), validate
    return opt(data, "ir_json", str), validate


def _validate_circuit(ir_json: str, qpu: Qpu) -> None:
    try:
        parse_ir(ir_json)
    except (CodaError, ValueError, TypeError) as exc:
        raise fail(400, str(exc) or type(exc).__name__) from None
    target = json.loads(ir_json).get("target")
    if target != qpu.native_gate_set:
        raise fail(
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
        raise fail(400, "shots must be an integer (or a raw string for bad-input tests)")
    if isinstance(shots, int) and validate and shots < 1:
        raise fail(400, "shots must be at least 1")
    return str(shots), shots if isinstance(shots, int) else None


def _expectation(data: JsonMap, measured: int | None, shots: int | None) -> JsonMap | None:
    """The submitter's expected result; ``"noop"`` means the no-op executor's all-zero counts."""
    expect = data.get("expect")
    if expect == "noop":
        if measured is None or shots is None:
            raise fail(400, "expect 'noop' needs a readable circuit and integer shots")
        return {"status": "completed", "counts": {"0" * measured: shots}, "shots_completed": shots}
    if expect is not None and not isinstance(expect, dict):
        raise fail(400, "expect must be an object or 'noop'")
    return expect


class Submission:
    """One checked submit request: the stream fields of each job, minus the job id."""

    def __init__(self, cloud: DevCloud, data: JsonMap) -> None:
        qpu_id = opt(data, "qpu_id", str)
        if qpu_id is None:
            raise fail(400, "qpu_id is required")
        self.qpu = cloud.store.require_qpu(qpu_id)
        self.ir_json, validate = _circuit(data, self.qpu)
        if validate:
            _validate_circuit(self.ir_json, self.qpu)
        self.measured = _measured(self.ir_json)
        self.shots, shots_int = _shots(data, validate)
        self.expect = _expectation(data, self.measured, shots_int)
        self.callback_base = opt(data, "callback_url", str) or f"{cloud.base_url()}{cloud.path('webhook')}"
        self.custom_callback = data.get("callback_url") is not None
        extra = opt(data, "extra_fields", dict, {})
        self.extra = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()}
        self.omit = [str(name) for name in opt(data, "omit_fields", list, [])]
        self.stream_key = f"qpu:{self.qpu.qpu_id}:jobs"

    def job(self, job_id: str) -> Job:
        """The record (with stream fields) of one job of this submission."""
        callback = self.callback_base if self.custom_callback else f"{self.callback_base}/{job_id}"
        fields = {"job_id": job_id, "callback_url": callback, "ir_json": self.ir_json, "shots": self.shots}
        fields.update(self.extra)
        for name in self.omit:
            fields.pop(name, None)
        if not fields:
            raise fail(400, "a stream entry needs at least one field")
        return Job(
            job_id=job_id,
            qpu_id=self.qpu.qpu_id,
            callback_url=callback,
            fields=fields,
            submitted_at=None,
            expect=self.expect,
            measurements=self.measured,
        )


def xadd_one(cloud: DevCloud, data: JsonMap) -> JsonMap:
    """XADD one job to ``qpu:{qpu_id}:jobs`` with the four string fields; the reply body."""
    plan = Submission(cloud, data)
    job_id = opt(data, "job_id", str) or f"job-{uuid.uuid4().hex}"
    job = plan.job(job_id)
    client = cloud.redis()
    new = cloud.store.add_jobs([job])
    cloud.store.set_submitted([job_id], time.time())
    try:
        stream_id = client.xadd(plan.stream_key, job.fields)  # type: ignore[arg-type]
    except redis.RedisError as exc:
        cloud.store.forget_jobs(new)
        raise redis_unavailable(exc) from None
    cloud.store.add_stream_ids({job_id: str(stream_id)})
    return {
        "job_id": job_id,
        "stream_id": stream_id,
        "stream_key": plan.stream_key,
        "callback_url": job.callback_url,
    }


def xadd_bulk(cloud: DevCloud, data: JsonMap) -> JsonMap:
    """XADD ``count`` copies of one circuit through pipelines, stamping each job's XADD time."""
    count = opt(data, "count", int)
    if count is None or not 1 <= count <= MAX_BULK_JOBS:
        raise fail(400, f"count must be between 1 and {MAX_BULK_JOBS}")
    plan = Submission(cloud, data)
    prefix = opt(data, "job_id_prefix", str) or f"bulk-{uuid.uuid4().hex[:10]}-"
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
        raise fail(503, f"cloud Redis failed after {done} of {count} jobs: {type(exc).__name__}") from None
    return {
        "job_ids": [j.job_id for j in jobs],
        "count": count,
        "stream_key": plan.stream_key,
        "elapsed_ms": round((time.time() - started) * 1000.0, 3),
    }
