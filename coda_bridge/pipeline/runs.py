"""Executor calls watched by the actor thread, and the result payloads they end in.

The executor runs in a child process of the worker (:mod:`.executor_run`) while the actor thread polls
the cancel keys, keeps the jobs' claims alive and enforces the time limit; a run that is cancelled or
overruns is asked to stop, and its process killed if it has not stopped within ``executor_stop_grace_sec``.
A run whose process died is run again in a fresh one, up to ``max_executor_crashes`` runs, then fails
naming how it died.  Every outcome becomes a payload (:mod:`.payloads`), or ``None`` if cancelled mid-run.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from ..executors.base import coerce_result
from ..executors.host import ExecutorHost
from ..executors.isolation import Died, describe_error
from ..metrics.histograms import JOB_DURATION, Histograms
from ..state.node_state import NodeState
from .claims import Claim
from .executor_run import ExecutorRun
from .payloads import Payload, completed, crash_failure, executor_failure, time_limit_failure
from .status import CloudStatus
from .timeline import Timeline

__all__ = ["GiveWay", "ReadyJob", "Runner", "Timings", "batch_time_limit_sec"]

logger = logging.getLogger(__name__)

#: Why jobs prepared ahead must go back to the queue unstarted (a drain, a pause), or ``None``.
GiveWay = Callable[[], str | None]
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


def batch_time_limit_sec(job_limit_sec: float, jobs: int) -> float:
    """A batch gets the time limit of its jobs together."""
    return job_limit_sec * jobs


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
        stop_grace_sec: float = 5.0,
        max_crashes: int = 3,
        timeline: Timeline | None = None,
    ) -> None:
        self.host = host
        self.timeline = timeline
        self.status = status
        self.state = state
        self.job_time_limit_sec = job_time_limit_sec
        self.cancel_poll_sec = cancel_poll_sec
        self.stop_grace_sec = stop_grace_sec
        self.max_crashes = max_crashes
        self.histograms = Histograms(state.client, state.qpu_id)
        self._warned_at = -math.inf
        self._queued = threading.local()  # a run this thread queued in a busy child, started, not yet watched

    def wait_turn(
        self, waiting: list[ReadyJob], give_way: GiveWay, stopping: GiveWay
    ) -> tuple[set[str], str | None]:
        """Hold ``waiting`` (claimed, checked) until the device is theirs; the device's next jobs.

        While the run before them goes on, their cancel keys are polled and
        their claims kept alive as a run's are, and ``give_way`` and
        ``stopping`` (a flag, no round trip) are asked.  Returns the jobs
        cancelled meanwhile (never started), or the reason they all go back
        unstarted; with neither, the device is theirs.  A single job is
        queued in the busy child itself (the lane): it returns once the child
        started it, and the next :meth:`run_all` watches that run.  Otherwise
        a slot is reserved for the next run (:meth:`ExecutorProcesses.reserve`).
        """
        processes = self.host.processes
        ids = [ready.job_id for ready in waiting]
        lane: ExecutorRun | None = None
        while True:
            if lane is None and len(waiting) == 1 and (child := processes.queue_behind()) is not None:
                run = ExecutorRun(self.host, "run", waiting[0].circuit, waiting[0].shots)
                lane = run if run.queue(child) else None
            if lane is not None:
                started = lane.started(self.cancel_poll_sec)
                if started:
                    self._queued.run = (waiting[0].job_id, lane)
                    return set(), None
                if started is None:  # its child died before it: it waits for a slot, as before
                    lane = None
            elif processes.reserve(self.cancel_poll_sec):
                break
            outcome = self._meanwhile(waiting, ids, give_way, stopping)
            if outcome is not None:
                if lane is not None and not lane.withdraw():  # too late: it runs, and is watched as a run
                    self._queued.run = (waiting[0].job_id, lane)
                    return set(), None
                return outcome
        reason = stopping()
        if reason is not None:
            processes.unreserve()
        return set(), reason

    def _meanwhile(
        self, waiting: list[ReadyJob], ids: list[str], give_way: GiveWay, stopping: GiveWay
    ) -> tuple[set[str], str | None] | None:
        """While jobs wait their turn: a reason they go back, their cancels, else claims kept alive."""
        reason = give_way() or stopping()
        if reason is not None:
            return set(), reason
        try:
            cancelled = self.status.cancels_seen(ids)
        except redis.RedisError as exc:
            logger.warning("Cancel keys unreadable (%s); the jobs waiting ahead wait on.", exc)
            cancelled = set()
        if cancelled:
            return set(cancelled), None
        for ready in waiting:
            try:
                ready.claim.refresh()
            except redis.RedisError as exc:
                logger.warning("Job %s: claim not refreshed (%s).", ready.job_id, exc)
        return None

    def unreserve(self) -> None:
        """Give back the slot :meth:`wait_turn` reserved and no run took; stop a queued run nobody watched."""
        self.host.processes.unreserve()
        queued = getattr(self._queued, "run", None)
        if queued is not None:
            self._queued.run = None
            self._stop(queued[1])

    def _queued_run(self, job_id: str) -> ExecutorRun | None:
        """The run :meth:`wait_turn` saw start for ``job_id`` in a busy child, once."""
        queued = getattr(self._queued, "run", None)
        if queued is None or queued[0] != job_id:
            return None
        self._queued.run = None
        return queued[1]

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

    def _stop(self, run: ExecutorRun) -> None:
        """Stop a run past its cancel or limit; a child killed for it is counted (``/metrics``)."""
        if run.stop(self.stop_grace_sec):
            self.state.count("executor_processes_killed")

    def _watch(self, run: ExecutorRun, watched: list[ReadyJob], limit: float, stop_for: set[str]) -> set[str]:
        """Wait for ``run`` while polling cancel keys and keeping claims alive; Redis blips are ridden out.

        Returns at once the jobs of ``stop_for`` whose cancel key was seen
        (the run goes on; the caller stops it), or nothing when the run ended.
        Raises :class:`TimeoutError` past ``limit``.
        """
        poll = self.cancel_poll_sec
        started = time.monotonic()
        while True:
            run.join(poll)
            if not run.is_alive():
                return set()
            try:
                cancelled = self.status.cancels_seen([ready.job_id for ready in watched]) & stop_for
            except redis.RedisError as exc:
                logger.warning("Cancel keys unreadable (%s); the run goes on.", exc)
                cancelled = set()
            if cancelled:
                return cancelled
            if time.monotonic() - started > limit:
                raise TimeoutError
            for ready in watched:
                try:
                    ready.claim.refresh()
                except redis.RedisError as exc:
                    logger.warning("Job %s: claim not refreshed (%s).", ready.job_id, exc)

    def _run_watched(
        self,
        ready: ReadyJob,
        timings: Timings,
        keep_alive: list[ReadyJob] | None = None,
        started: Callable[[], None] = lambda: None,
    ) -> Payload | None:
        """Run one job on the executor, again in a fresh process when its process died; ``None`` if cancelled.

        ``keep_alive`` are claims of jobs waiting their turn behind this one.
        """
        died = ""
        for attempt in range(1, self.max_crashes + 1):
            outcome = self._run_once(ready, keep_alive or [], timings, started)
            if not isinstance(outcome, Died):
                return outcome
            died = outcome.how
            logger.warning(
                "Job %s: the executor's process died with %s during its run (attempt %d of %d).",
                ready.job_id,
                died,
                attempt,
                self.max_crashes,
            )
            self._note_crash(ready.job_id, died, again=attempt < self.max_crashes)
        logger.error("Job %s failed: the executor's process died on each of its runs.", ready.job_id)
        return crash_failure(ready.job_id, died, self.max_crashes)

    def _note_crash(self, job_id: str, died: str, *, again: bool) -> None:
        """The job's timeline: the attempt's process died, and (``again``) the next attempt starts now."""
        if self.timeline is None:
            return
        events = [self.timeline.event(job_id, "crashed", reason=f"the executor's process died with {died}")]
        if again:
            events.append(
                self.timeline.event(
                    job_id,
                    "started",
                    executor=self.host.origin,
                    version=self.host.version,
                    rerun="after a crash",
                )
            )
        self.timeline.write(events, with_device=True)

    def _run_once(
        self, ready: ReadyJob, keep_alive: list[ReadyJob], timings: Timings, started_: Callable[[], None]
    ) -> Payload | Died | None:
        """One run of one job: its result, ``None`` if it was cancelled, :class:`Died` if its process died."""
        limit = self.job_time_limit_sec
        run = self._queued_run(ready.job_id)
        if run is None:
            run = ExecutorRun(self.host, "run", ready.circuit, ready.shots)
            run.start()
        started = time.monotonic()
        started_()
        try:
            if self._watch(run, [ready, *keep_alive], limit, {ready.job_id}):
                self._stop(run)
                logger.info("Job %s: cancel key seen mid-run; run stopped.", ready.job_id)
                return None
        except TimeoutError:
            self._stop(run)
            return time_limit_failure(ready.job_id, limit)
        timings.append((float(time.monotonic() - started), 1))
        if run.died is not None:
            self.state.count("executor_processes_died")
            return Died(run.died)
        if run.error is not None:
            return executor_failure(ready.job_id, run.error)
        try:
            return completed(ready.job_id, coerce_result(run.result, ready.circuit, ready.shots))
        except Exception as exc:  # a result of a shape nobody expected is this job's failure
            return executor_failure(ready.job_id, describe_error(exc))

    def _run_batch_watched(
        self, batch: list[ReadyJob], timings: Timings, started_: Callable[[], None]
    ) -> dict[int, Payload | None]:
        """Run jobs through ``batch_run``; the outcome of each job it ended, by index (the rest run alone).

        A cancel seen mid-batch stops the batch: the cancelled jobs end
        ``cancelled`` and the others run again one by one.  A batch past the
        sum of its jobs' limits, a failed call, or a dead process also hands
        every job to a run of its own, with its own limit.
        """
        limit = batch_time_limit_sec(self.job_time_limit_sec, len(batch))
        run = ExecutorRun(self.host, "batch_run", [(r.circuit, r.shots) for r in batch])
        run.start()
        started = time.monotonic()
        started_()
        try:
            cancelled = self._watch(run, batch, limit, {ready.job_id for ready in batch})
        except TimeoutError:
            self._stop(run)
            logger.warning(
                "batch_run of %d jobs passed their time limit together (%g s); running them one by one.",
                len(batch),
                limit,
            )
            return {}
        if cancelled:
            self._stop(run)
            logger.info(
                "Cancel seen for %d job(s) of a batch of %d; the batch was stopped, the others run again.",
                len(cancelled),
                len(batch),
            )
            return {index: None for index, ready in enumerate(batch) if ready.job_id in cancelled}
        timings.append((float(time.monotonic() - started), len(batch)))
        if run.died is not None:
            self.state.count("executor_processes_died")
        if run.died is not None or run.error is not None:
            logger.warning(
                "batch_run of %d jobs failed (%s); running them one by one.",
                len(batch),
                run.error or f"the executor's process died with {run.died}",
            )
            return {}
        results = run.result
        if not isinstance(results, list | tuple) or len(results) != len(batch):
            count = len(results) if isinstance(results, list | tuple) else type(results).__name__
            logger.warning(
                "batch_run gave %s results for %d jobs; running them one by one.", count, len(batch)
            )
            return {}
        payloads: dict[int, Payload | None] = {}
        for index, (ready, result) in enumerate(zip(batch, results, strict=True)):
            try:
                payloads[index] = completed(ready.job_id, coerce_result(result, ready.circuit, ready.shots))
            except Exception as exc:  # one bad result fails its job, not the batch
                payloads[index] = executor_failure(ready.job_id, describe_error(exc))
        return payloads

    def run_all(
        self,
        batch: list[ReadyJob],
        timings: Timings | None = None,
        started: Callable[[], None] | None = None,
    ) -> list[Payload | None]:
        """Run the jobs through ``batch_run`` when there are several; each job it did not end, in turn.

        The executor calls' times go to ``timings``, for :meth:`observe` once the results are recorded.
        ``started`` is called once, as soon as the first call was handed to the executor's process
        (the node's own bookkeeping of a start follows the device's start, never precedes it).
        """
        timings = [] if timings is None else timings
        once: list[Callable[[], None]] = [started] if started is not None else []

        def first_start() -> None:
            """The start's bookkeeping never costs the run in flight (nor its slot): a failure is logged."""
            while once:
                try:
                    once.pop()()
                except Exception as exc:
                    jobs = ", ".join(ready.job_id for ready in batch)
                    error = describe_error(exc)
                    logger.warning("Job %s runs, but its start was not recorded: %s", jobs, error)

        ended = self._run_batch_watched(batch, timings, first_start) if len(batch) > 1 else {}
        payloads: list[Payload | None] = []
        for index, ready in enumerate(batch):
            if index in ended:
                payloads.append(ended[index])
            elif index and self._cancelled_before_start(ready):
                payloads.append(None)
            else:
                payloads.append(self._run_watched(ready, timings, batch[index + 1 :], first_start))
        return payloads

    def _cancelled_before_start(self, ready: ReadyJob) -> bool:
        """Whether the cloud cancelled a job while it waited its turn in this batch."""
        try:
            return bool(self.status.cancels_seen([ready.job_id]))
        except redis.RedisError:
            return False
