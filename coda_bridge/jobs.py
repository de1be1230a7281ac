"""The executor actor's work: one stream entry in, one recorded result out.

A job is skipped when the cloud already finished or cancelled it, claimed
so no two workers run it at once, validated, run on the executor in a
thread while the actor watches the cancel key and the time limit, and its
result is recorded once (first writer wins) before it is queued for
delivery.  A rerun after a crash finds the recorded result and delivers
that one, so a job never gets two different results.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from .errors import CodaError, ExecutorError, JobBusy, JobError
from .failpoints import failpoint
from .keys import cancel_key, claim_key, job_key, status_key
from .nodestate import utc_iso
from .runtime import Runtime

__all__ = [
    "ERROR_MAX_CHARS",
    "callback_allowed",
    "JobOutcome",
    "execute_batch",
    "execute_job",
    "failure_payload",
    "parse_shots",
    "record_result",
]

logger = logging.getLogger(__name__)

#: The cloud keeps at most this much of an error text.
ERROR_MAX_CHARS = 500
#: Lease of a job claim; refreshed at every cancel poll while the job runs, so it
#: lapses this long after its holder died.
CLAIM_LEASE_SEC = 15.0
#: How long a recorded result is kept (it is normally delivered within seconds).
RESULT_TTL_SEC = 30 * 86_400
#: How long a finished job's result may wait for the local Redis before the job is given up (and rerun).
RECORD_PATIENCE_SEC = 300.0
RECORD_RETRY_START_SEC = 1.0
RECORD_RETRY_MAX_SEC = 30.0
#: Terminal states after which a message is acknowledged and skipped.
TERMINAL_STATES = ("completed", "cancelled")

Enqueue = Callable[[str, str, str], None]

_REFRESH_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
    "return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"
)
_RELEASE_IF_OURS = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


@dataclass(frozen=True)
class JobOutcome:
    """What happened to one stream entry (for logs, metrics and tests)."""

    job_id: str | None
    outcome: str  # queued, skipped, cancelled
    detail: str = ""


def failure_payload(job_id: str, error: str) -> dict[str, Any]:
    """A ``failed`` result with the error cut to the cloud's limit."""
    return {"job_id": job_id, "status": "failed", "error": error[:ERROR_MAX_CHARS]}


def parse_shots(raw: Any, max_shots: int) -> int:
    """``shots`` as sent (a decimal string) to an int from 1 to ``max_shots``, else :class:`JobError`."""
    text = str(raw).strip() if raw is not None else ""
    shown = text if len(text) <= 40 else text[:37] + "..."
    if not text.isdigit():
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shown!r}")
    shots = int(text)
    if not 1 <= shots <= max_shots:
        raise JobError(f"shots must be an integer from 1 to {max_shots}, got {shots}")
    return shots


def callback_allowed(callback_url: str, webapp_url: str, allowed_hosts: list[str]) -> bool:
    """Results go only to the cloud's own host, unless the site allows more."""
    host = (urlsplit(callback_url).hostname or "").lower()
    if not host:
        return False
    own = (urlsplit(webapp_url).hostname or "").lower()
    return host == own or host in {h.lower() for h in allowed_hosts}


class _CloudStatus:
    """Writes of the cloud's status hash.

    ``executing`` rides out a blip (the result matters more); a terminal
    state must land, so its failure propagates and the message is retried.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def write(self, job_id: str, fields: Mapping[str, str], *, terminal: bool = False) -> bool:
        mapping: dict[Any, Any] = dict(fields)
        try:
            self.rt.cloud_redis.hset(status_key(job_id), mapping=mapping)
        except redis.RedisError as exc:
            if terminal:
                raise
            logger.warning("Could not write status %s of job %s: %s", fields.get("state"), job_id, exc)
            return False
        return True


def _precheck(rt: Runtime, job_id: str) -> tuple[str | None, bool]:
    """The cloud's state of a job and whether its cancel key exists, in one round trip."""
    pipe = rt.cloud_redis.pipeline(transaction=False)
    pipe.hget(status_key(job_id), "state")
    pipe.exists(cancel_key(job_id))
    state, cancelled = pipe.execute()
    return state, bool(cancelled)


def _cancelled(rt: Runtime, job_id: str, entry_id: str) -> None:
    _CloudStatus(rt).write(
        job_id,
        {"state": "cancelled", "cancelled_at": utc_iso(), "message_id": entry_id, "qpu_id": rt.qpu_id},
        terminal=True,
    )
    rt.state.count("jobs_cancelled")
    logger.info("Job %s cancelled.", job_id)


class _Claim:
    """A lease on one job in the local Redis, so one job never runs twice at once."""

    def __init__(self, rt: Runtime, job_id: str) -> None:
        self.rt = rt
        self.key = claim_key(rt.qpu_id, job_id)
        self.job_id = job_id
        self.token = uuid.uuid4().hex

    def acquire(self) -> tuple[bool, str | None, float]:
        """Take the claim; also return the job's recorded result and the lease left (one round trip)."""
        pipe = self.rt.local_redis.pipeline(transaction=False)
        pipe.set(self.key, self.token, nx=True, px=int(CLAIM_LEASE_SEC * 1000))
        pipe.hget(job_key(self.rt.qpu_id, self.job_id), "result")
        pipe.pttl(self.key)
        taken, recorded, ttl_ms = pipe.execute()
        recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
        return bool(taken), recorded, max(int(ttl_ms), 0) / 1000

    def refresh(self) -> bool:
        """Extend the lease if the claim is still ours; False (and a loud log) if it was lost."""
        pipe = self.rt.local_redis.pipeline(transaction=False)
        pipe.eval(_REFRESH_IF_OURS, 1, self.key, self.token, int(CLAIM_LEASE_SEC * 1000))
        pipe.zadd(self.rt.state.key("running"), {self.job_id: time.time() + CLAIM_LEASE_SEC}, xx=True)
        ours = bool(pipe.execute()[0])
        if not ours:
            logger.error("Job %s: its claim lapsed while it ran (process stalled?).", self.job_id)
        return ours

    def release(self) -> None:
        """Give the claim back, unless its lease lapsed and another worker holds it now."""
        pipe = self.rt.local_redis.pipeline(transaction=False)
        pipe.eval(_RELEASE_IF_OURS, 1, self.key, self.token)
        pipe.zrem(self.rt.state.key("running"), self.job_id)
        pipe.execute()


def record_result(rt: Runtime, job_id: str, payload: Mapping[str, Any]) -> str:
    """Record the job's result unless one is recorded already; return the one that counts."""
    key = job_key(rt.qpu_id, job_id)
    pipe = rt.local_redis.pipeline(transaction=False)
    pipe.hsetnx(key, "result", json.dumps(payload, separators=(",", ":")))
    pipe.expire(key, RESULT_TTL_SEC)
    pipe.hget(key, "result")
    recorded = pipe.execute()[2]
    return recorded.decode() if isinstance(recorded, bytes) else str(recorded)


def _record_patiently(rt: Runtime, job_id: str, payload: Mapping[str, Any]) -> None:
    """Record a result that so far exists only in memory, riding out a local Redis outage.

    Giving up here would mean running the job again, so it tries for a while.
    """
    delay = RECORD_RETRY_START_SEC
    deadline = time.monotonic() + RECORD_PATIENCE_SEC
    while True:
        try:
            record_result(rt, job_id, payload)
            return
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("Result of job %s not recorded yet (%s); retrying in %.0f s.", job_id, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX_SEC)


class _Run:
    """One executor call on the runtime's executor threads, so the actor can watch the cancel key.

    A run takes one of the runtime's executor slots first, so a run that
    was abandoned (cancel, time limit) but still holds the device keeps the
    next one waiting instead of running beside it.
    """

    def __init__(self, rt: Runtime, call: Callable[..., Any], *args: Any) -> None:
        self.rt, self.call, self.args = rt, call, args
        self.abandoned = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._future: Future[None] | None = None

    def start(self) -> None:
        self._future = self.rt.run_pool.submit(self._run)

    def join(self, timeout: float) -> None:
        assert self._future is not None
        wait([self._future], timeout=timeout)

    def is_alive(self) -> bool:
        return self._future is not None and not self._future.done()

    def _run(self) -> None:
        with self.rt.run_slots:
            if self.abandoned.is_set():
                return
            try:
                self.result = self.call(*self.args)
            except BaseException as exc:  # reported to the actor thread, which decides
                self.error = exc


def _watch(rt: Runtime, run: _Run, watched: list[_Ready], limit: float, *, stop_on_cancel: bool) -> set[str]:
    """Wait for ``run`` while polling cancel keys and keeping claims alive; Redis blips are ridden out.

    Returns the jobs whose cancel key was seen.  Raises :class:`TimeoutError`
    past ``limit``; with ``stop_on_cancel``, returns at the first cancel.
    """
    poll = rt.settings.cancel_poll_interval_sec
    started = time.monotonic()
    cancelled: set[str] = set()
    while True:
        run.join(poll)
        if not run.is_alive():
            return cancelled
        try:
            pipe = rt.cloud_redis.pipeline(transaction=False)
            for ready in watched:
                pipe.exists(cancel_key(ready.job_id))
            cancelled.update(r.job_id for r, seen in zip(watched, pipe.execute(), strict=True) if seen)
        except redis.RedisError as exc:
            logger.warning("Cancel keys unreadable (%s); the run goes on.", exc)
        if cancelled and stop_on_cancel:
            return cancelled
        if time.monotonic() - started > limit:
            raise TimeoutError
        for ready in watched:
            try:
                ready.claim.refresh()
            except redis.RedisError as exc:
                logger.warning("Job %s: claim not refreshed (%s).", ready.job_id, exc)


def _validate(rt: Runtime, fields: Mapping[str, str]) -> tuple[Any, int]:
    from .ir import parse_ir

    settings = rt.settings
    shots = parse_shots(fields.get("shots"), settings.max_shots)
    raw_ir = fields.get("ir_json")
    if raw_ir is None:
        raise JobError("message has no ir_json")
    circuit = parse_ir(raw_ir)
    if circuit.target != settings.native_gate_set:
        raise JobError(
            f"Circuit target {circuit.target!r} does not match this QPU's native gate set "
            f"{settings.native_gate_set!r}"
        )
    if circuit.num_qubits > settings.num_qubits:
        raise JobError(f"Circuit needs {circuit.num_qubits} qubits; this QPU has {settings.num_qubits}")
    return circuit, shots


@dataclass
class _Ready:
    """A claimed, validated job about to run; its claim is released by whoever prepared it."""

    job_id: str
    callback: str
    entry_id: str
    claim: _Claim
    circuit: Any
    shots: int


def _completed(job_id: str, result: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": "completed",
        "counts": dict(result.counts),
        "execution_time_ms": float(result.execution_time_ms),
        "shots_completed": int(result.shots_completed),
    }


def _executor_failure(job_id: str, error: BaseException) -> dict[str, Any]:
    if isinstance(error, CodaError):
        return failure_payload(job_id, f"Executor error: {error}")
    return failure_payload(job_id, f"Executor error: {type(error).__name__}: {error}")


def _time_limit_failure(job_id: str, limit: float) -> dict[str, Any]:
    return failure_payload(
        job_id, f"Job exceeded the time limit of {limit:g} s (job_time_limit_sec); run abandoned"
    )


def _run_watched(rt: Runtime, ready: _Ready, keep_alive: list[_Ready] | None = None) -> dict[str, Any] | None:
    """Run one job on the executor; ``None`` when it was cancelled mid-run.

    ``keep_alive`` are claims of jobs waiting their turn behind this one.
    """
    from .executors.base import call_run, cancel, coerce_result

    executor = rt.executor()
    limit = rt.settings.job_time_limit_sec
    started = time.monotonic()
    run = _Run(rt, call_run, executor, ready.circuit, ready.shots)
    run.start()
    try:
        if _watch(rt, run, [ready, *(keep_alive or [])], limit, stop_on_cancel=True) & {ready.job_id}:
            run.abandoned.set()
            cancel(executor)
            logger.info("Job %s: cancel key seen mid-run; run abandoned.", ready.job_id)
            return None
    except TimeoutError:
        run.abandoned.set()
        cancel(executor)
        return _time_limit_failure(ready.job_id, limit)
    rt.state.count("executor_seconds", float(time.monotonic() - started))
    if run.error is not None:
        return _executor_failure(ready.job_id, run.error)
    try:
        return _completed(ready.job_id, coerce_result(run.result, ready.circuit, ready.shots))
    except ExecutorError as exc:
        return failure_payload(ready.job_id, f"Executor error: {exc}")


def _run_batch_watched(rt: Runtime, batch: list[_Ready]) -> list[dict[str, Any] | None] | None:
    """Run jobs through ``batch_run``; ``None`` when the batch call failed (run them one by one)."""
    from .executors.base import call_batch_run, cancel, coerce_result

    executor = rt.executor()
    limit = batch_time_limit_sec(rt.settings.job_time_limit_sec, len(batch))
    started = time.monotonic()
    run = _Run(rt, call_batch_run, executor, [(r.circuit, r.shots) for r in batch])
    run.start()
    try:
        cancelled = _watch(rt, run, batch, limit, stop_on_cancel=False)
    except TimeoutError:
        run.abandoned.set()
        cancel(executor)
        return [_time_limit_failure(r.job_id, limit) for r in batch]
    rt.state.count("executor_seconds", float(time.monotonic() - started))
    if run.error is not None:
        logger.warning("batch_run of %d jobs failed (%s); running them one by one.", len(batch), run.error)
        return None
    payloads: list[dict[str, Any] | None] = []
    for ready, result in zip(batch, run.result, strict=True):
        if ready.job_id in cancelled:
            payloads.append(None)
            continue
        try:
            payloads.append(_completed(ready.job_id, coerce_result(result, ready.circuit, ready.shots)))
        except ExecutorError as exc:
            payloads.append(failure_payload(ready.job_id, f"Executor error: {exc}"))
    return payloads


def batch_time_limit_sec(job_limit_sec: float, jobs: int) -> float:
    """A batch gets the time limit of its jobs together."""
    return job_limit_sec * jobs


def _prepare(rt: Runtime, fields: Mapping[str, str], entry_id: str, enqueue: Enqueue) -> JobOutcome | _Ready:
    """Everything before the run: skip, cancel, claim, validate; a bad job ends here as a failed result.

    Raises :class:`JobBusy` when another worker holds the job's claim.
    """
    job_id, callback = fields.get("job_id"), fields.get("callback_url")
    if not job_id or not callback:
        missing = "job_id" if not job_id else "callback_url"
        logger.warning("Skipping stream entry %s: it has no %s.", entry_id, missing)
        rt.state.count("jobs_skipped")
        return JobOutcome(job_id or None, "skipped", f"no {missing}")

    state, cancelled = _precheck(rt, job_id)
    if state in TERMINAL_STATES:
        logger.info("Skipping job %s: already %s.", job_id, state)
        return JobOutcome(job_id, "skipped", f"already {state}")
    if cancelled and not rt.local_redis.hexists(job_key(rt.qpu_id, job_id), "result"):
        _cancelled(rt, job_id, entry_id)
        return JobOutcome(job_id, "cancelled", "before start")

    claim = _Claim(rt, job_id)
    taken, recorded, lease_left = claim.acquire()
    if recorded is not None:
        # A run before a crash recorded the result; deliver that one, never run again.
        if taken:
            claim.release()
        enqueue(job_id, callback, entry_id)
        return JobOutcome(job_id, "queued", "recorded earlier")
    if not taken:
        # Running elsewhere, or its holder died: look again once the lease could have lapsed.
        logger.info("Job %s is claimed by another worker; checking again in %.1f s.", job_id, lease_left)
        raise JobBusy(job_id, lease_left + 0.5)

    settings = rt.settings
    if not callback_allowed(callback, settings.webapp_url, settings.allowed_callback_hosts):
        claim.release()
        host = urlsplit(callback).hostname
        refusal = f"callback host {host!r} is not the cloud's host; allowed_callback_hosts can allow it"
        logger.error("Job %s failed locally: %s", job_id, refusal)
        _CloudStatus(rt).write(
            job_id,
            {"state": "failed", "error": refusal[:ERROR_MAX_CHARS], "failed_at": utc_iso()},
            terminal=True,
        )
        rt.state.count("jobs_failed")
        return JobOutcome(job_id, "skipped", refusal)
    error: str | None = None
    try:
        circuit, shots = _validate(rt, fields)
        rt.executor()
    except JobError as exc:
        error = str(exc)
    except CodaError as exc:  # the executor could not be resolved or built
        error = f"Executor unavailable: {exc}"
    if error is not None:
        outcome = _finish(rt, job_id, callback, entry_id, failure_payload(job_id, error), enqueue=enqueue)
        claim.release()
        return outcome
    rt.state.job_started(job_id, CLAIM_LEASE_SEC)
    _CloudStatus(rt).write(
        job_id, {"state": "executing", "started_at": utc_iso(), "message_id": entry_id, "qpu_id": rt.qpu_id}
    )
    return _Ready(job_id, callback, entry_id, claim, circuit, shots)


def _finish(
    rt: Runtime,
    job_id: str,
    callback: str,
    entry_id: str,
    payload: dict[str, Any] | None,
    *,
    enqueue: Enqueue,
) -> JobOutcome:
    """Record the result once and queue its delivery; or mark the job cancelled."""
    if payload is None:
        _cancelled(rt, job_id, entry_id)
        return JobOutcome(job_id, "cancelled", "during run")
    _record_patiently(rt, job_id, payload)
    failpoint("jobs.after_record")
    enqueue(job_id, callback, entry_id)
    return JobOutcome(job_id, "queued", str(payload["status"]))


def execute_job(rt: Runtime, fields: Mapping[str, str], entry_id: str, enqueue: Enqueue) -> JobOutcome:
    """Take one stream entry to a recorded, queued result (or a skip, or a cancel).

    ``enqueue(job_id, callback_url, entry_id)`` queues the delivery of the
    job's recorded result.
    """
    ready = _prepare(rt, fields, entry_id, enqueue)
    if isinstance(ready, JobOutcome):
        return ready
    try:
        return _finish(rt, ready.job_id, ready.callback, entry_id, _run_watched(rt, ready), enqueue=enqueue)
    finally:
        ready.claim.release()


def execute_batch(
    rt: Runtime,
    entries: Sequence[tuple[Mapping[str, str], str]],
    enqueue: Enqueue,
    later: Callable[[Mapping[str, str], str, float], None],
    running: list[tuple[Mapping[str, str], str]] | None = None,
) -> list[JobOutcome]:
    """Run several waiting jobs through the executor's ``batch_run``, one result per job in order.

    A job claimed elsewhere goes back through ``later(fields, entry_id,
    delay_sec)``; when the batch call fails, the jobs run one by one.
    ``running`` collects the entries that reached the executor.
    """
    outcomes: list[JobOutcome] = []
    batch: list[_Ready] = []
    try:
        for fields, entry_id in entries:
            try:
                ready = _prepare(rt, fields, entry_id, enqueue)
            except JobBusy as busy:
                later(fields, entry_id, busy.retry_after_sec)
                continue
            if isinstance(ready, JobOutcome):
                outcomes.append(ready)
            else:
                batch.append(ready)
                if running is not None:
                    running.append((fields, entry_id))
        payloads = _run_batch_watched(rt, batch) if len(batch) > 1 else None
        if payloads is None:
            payloads = [_run_watched(rt, ready, batch[i + 1 :]) for i, ready in enumerate(batch)]
        for ready, payload in zip(batch, payloads, strict=True):
            outcomes.append(
                _finish(rt, ready.job_id, ready.callback, ready.entry_id, payload, enqueue=enqueue)
            )
    finally:
        for ready in batch:
            ready.claim.release()
    return outcomes
