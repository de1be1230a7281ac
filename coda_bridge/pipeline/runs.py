"""Executor calls watched by the actor thread, and the result payloads they end in.

The executor runs on the host's executor threads while the actor thread
polls the cancel keys, keeps the jobs' claims alive and enforces the time
limit; a run that is cancelled or overruns is abandoned (and the executor
asked to stop).  Every outcome becomes a result payload, or ``None`` for a
job cancelled mid-run.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import redis

from ..broker.histograms import JOB_DURATION, Histograms
from ..broker.shared_state import NodeState
from ..errors import CodaError
from ..executors.host import ExecutorHost
from .claims import Claim
from .status import ERROR_MAX_CHARS, CloudStatus

__all__ = [
    "Payload",
    "ReadyJob",
    "Runner",
    "Timings",
    "batch_time_limit_sec",
    "failure_payload",
]

logger = logging.getLogger(__name__)

Payload = dict[str, Any]
#: The executor calls of a batch, as (seconds, jobs) each, written after the results are recorded.
Timings = list[tuple[float, int]]

#: A failed write of the run's observations is logged at most once per this many seconds.
OBSERVATION_WARNING_INTERVAL_SEC = 60.0


@dataclass
class ReadyJob:
    """A claimed, validated job about to run; its claim is released by whoever prepared it."""

    job_id: str
    callback: str
    entry_id: str
    claim: Claim
    circuit: Any
    shots: int


def failure_payload(job_id: str, error: str) -> Payload:
    """A ``failed`` result with the error cut to the cloud's limit."""
    return {"job_id": job_id, "status": "failed", "error": error[:ERROR_MAX_CHARS]}


def _completed(job_id: str, result: Any) -> Payload:
    return {
        "job_id": job_id,
        "status": "completed",
        "counts": dict(result.counts),
        "execution_time_ms": float(result.execution_time_ms),
        "shots_completed": int(result.shots_completed),
    }


def _executor_failure(job_id: str, error: BaseException) -> Payload:
    if isinstance(error, CodaError):
        return failure_payload(job_id, f"Executor error: {error}")
    return failure_payload(job_id, f"Executor error: {type(error).__name__}: {error}")


def _time_limit_failure(job_id: str, limit: float) -> Payload:
    return failure_payload(
        job_id, f"Job exceeded the time limit of {limit:g} s (job_time_limit_sec); run abandoned"
    )


def batch_time_limit_sec(job_limit_sec: float, jobs: int) -> float:
    """A batch gets the time limit of its jobs together."""
    return job_limit_sec * jobs


class _Run:
    """One executor call on the host's executor threads, so the actor can watch the cancel key.

    A run takes one of the host's executor slots first, so a run that
    was abandoned (cancel, time limit) but still holds the device keeps the
    next one waiting instead of running beside it.
    """

    def __init__(self, host: ExecutorHost, call: Callable[..., Any], *args: Any) -> None:
        self.host, self.call, self.args = host, call, args
        self.abandoned = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._future: Future[None] | None = None

    def start(self) -> None:
        self._future = self.host.run_pool.submit(self._run)

    def join(self, timeout: float) -> None:
        assert self._future is not None
        wait([self._future], timeout=timeout)

    def is_alive(self) -> bool:
        return self._future is not None and not self._future.done()

    def _run(self) -> None:
        with self.host.run_slots:
            if self.abandoned.is_set():
                return
            try:
                self.result = self.call(*self.args)
            except BaseException as exc:  # reported to the actor thread, which decides
                self.error = exc


class Runner:
    """Runs ready jobs on the host's executor, watching cancel keys and the time limit."""

    def __init__(
        self,
        host: ExecutorHost,
        status: CloudStatus,
        state: NodeState,
        *,
        job_time_limit_sec: float,
        cancel_poll_sec: float,
    ) -> None:
        self.host = host
        self.status = status
        self.state = state
        self.job_time_limit_sec = job_time_limit_sec
        self.cancel_poll_sec = cancel_poll_sec
        self.histograms = Histograms(state.client, state.qpu_id)
        self._warned_at = -math.inf

    def observe(self, timings: Timings) -> None:
        """Count the executor's time, and each job's share in the job-duration histogram: best effort.

        Called once the results are recorded: a broker that refuses these
        writes costs a log line (at most one a minute), never a run.
        """
        if not timings:
            return
        try:
            pipe = self.state.client.pipeline(transaction=False)
            for seconds, jobs in timings:
                self.state.count("executor_seconds", seconds, pipe=pipe)
                for _ in range(jobs):
                    self.histograms.observe(JOB_DURATION.name, seconds / jobs, pipe=pipe)
            pipe.execute()
        except redis.RedisError as exc:
            now = time.monotonic()
            if now - self._warned_at >= OBSERVATION_WARNING_INTERVAL_SEC:
                self._warned_at = now
                logger.warning(
                    "Executor time not written to the broker Redis (%s); the results are recorded, "
                    "only /metrics misses it.",
                    exc,
                )

    def _watch(self, run: _Run, watched: list[ReadyJob], limit: float, *, stop_on_cancel: bool) -> set[str]:
        """Wait for ``run`` while polling cancel keys and keeping claims alive; Redis blips are ridden out.

        Returns the jobs whose cancel key was seen.  Raises :class:`TimeoutError`
        past ``limit``; with ``stop_on_cancel``, returns at the first cancel.
        """
        poll = self.cancel_poll_sec
        started = time.monotonic()
        cancelled: set[str] = set()
        while True:
            run.join(poll)
            if not run.is_alive():
                return cancelled
            try:
                cancelled |= self.status.cancels_seen([ready.job_id for ready in watched])
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

    def _run_watched(
        self, ready: ReadyJob, timings: Timings, keep_alive: list[ReadyJob] | None = None
    ) -> Payload | None:
        """Run one job on the executor; ``None`` when it was cancelled mid-run.

        ``keep_alive`` are claims of jobs waiting their turn behind this one;
        the call's time goes to ``timings``.
        """
        from ..executors.base import call_run, cancel, coerce_result

        executor = self.host.executor()
        limit = self.job_time_limit_sec
        started = time.monotonic()
        run = _Run(self.host, call_run, executor, ready.circuit, ready.shots)
        run.start()
        try:
            if self._watch(run, [ready, *(keep_alive or [])], limit, stop_on_cancel=True) & {ready.job_id}:
                run.abandoned.set()
                cancel(executor)
                logger.info("Job %s: cancel key seen mid-run; run abandoned.", ready.job_id)
                return None
        except TimeoutError:
            run.abandoned.set()
            cancel(executor)
            return _time_limit_failure(ready.job_id, limit)
        timings.append((float(time.monotonic() - started), 1))
        if run.error is not None:
            return _executor_failure(ready.job_id, run.error)
        try:
            return _completed(ready.job_id, coerce_result(run.result, ready.circuit, ready.shots))
        except Exception as exc:  # a result of a shape nobody expected is this job's failure
            return _executor_failure(ready.job_id, exc)

    def _run_batch_watched(self, batch: list[ReadyJob], timings: Timings) -> list[Payload | None] | None:
        """Run jobs through ``batch_run``; ``None`` when the batch call failed (run them one by one)."""
        from ..executors.base import call_batch_run, cancel, coerce_result

        executor = self.host.executor()
        limit = batch_time_limit_sec(self.job_time_limit_sec, len(batch))
        started = time.monotonic()
        run = _Run(self.host, call_batch_run, executor, [(r.circuit, r.shots) for r in batch])
        run.start()
        try:
            cancelled = self._watch(run, batch, limit, stop_on_cancel=False)
        except TimeoutError:
            run.abandoned.set()
            cancel(executor)
            return [_time_limit_failure(r.job_id, limit) for r in batch]
        timings.append((float(time.monotonic() - started), len(batch)))
        if run.error is not None:
            logger.warning(
                "batch_run of %d jobs failed (%s); running them one by one.", len(batch), run.error
            )
            return None
        results = run.result
        if not isinstance(results, list | tuple) or len(results) != len(batch):
            count = len(results) if isinstance(results, list | tuple) else type(results).__name__
            logger.warning(
                "batch_run gave %s results for %d jobs; running them one by one.", count, len(batch)
            )
            return None
        payloads: list[Payload | None] = []
        for ready, result in zip(batch, results, strict=True):
            if ready.job_id in cancelled:
                payloads.append(None)
                continue
            try:
                payloads.append(_completed(ready.job_id, coerce_result(result, ready.circuit, ready.shots)))
            except Exception as exc:  # one bad result fails its job, not the batch
                payloads.append(_executor_failure(ready.job_id, exc))
        return payloads

    def run_all(self, batch: list[ReadyJob], timings: Timings | None = None) -> list[Payload | None]:
        """Run the jobs through ``batch_run`` when there are several, else (or on failure) in turn.

        The executor calls' times go to ``timings``, for :meth:`observe` once the results are recorded.
        """
        timings = [] if timings is None else timings
        payloads = self._run_batch_watched(batch, timings) if len(batch) > 1 else None
        if payloads is None:
            payloads = [self._run_watched(ready, timings, batch[i + 1 :]) for i, ready in enumerate(batch)]
        return payloads
