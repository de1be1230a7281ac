"""The fault scenario shared by ``tests/fault/test_fault_suite.py`` and ``bench/faults.py``.

A node runs a few hundred short jobs while a seeded schedule kills -9 each
of its process types (bridge, jobs, results, control) at random moments
and restarts them, crashes the cloud's Redis and brings it back, makes the
simulator answer 503 to every webhook for a while, and 400 to one job's.
Then every job is accounted for:

- lost: a job that reached the stream and never got a terminal result (an
  accepted webhook; for the job refused with 400, a ``failed`` status);
- run again after delivery: an executor run that began after the cloud had
  accepted that job's result;
- concurrent runs: two runs of one job overlapping in time;
- duplicate deliveries (reported, allowed) and wrong results (a result that
  differs from the expected one, or from an earlier delivery of the job).

The cloud's Redis runs with an append-only file fsynced on every write
(``PersistentRedis``), as a production Redis holding a job stream would, so
a crash of it keeps every XADD it acknowledged: "every job that reached the
stream" is every job whose submit the simulator confirmed.  Submissions are
paused while that Redis is down, so no submit is left half-done.

This module is also the scenario's executor (``fault_support:create_executor``):
each run appends ``start <tag> <time>`` and ``end <tag> <time>`` to
``$FAULT_EXECUTOR_LOG``, so runs can be counted per job and placed in time.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORT = Path(__file__).resolve().parent
#: What "procfile" mode runs: the repo's Procfile, its own command lines (``coda-bridge bridge``, ...).
PROCFILE = SUPPORT.parents[1] / "Procfile"


def _bell(tag: str) -> dict[str, Any]:
    from pipeline_support import bell  # imported late: this module is also the workers' executor

    return bell(tag)


#: Process types of a node that the scenario kills.
KILLED_TYPES = ("bridge", "jobs", "results", "control")
#: The node's webhook timeout: a POST to the local simulator takes milliseconds; a delivery a killed
#: results worker left in flight is retried once it plus 5 s (the delivery lease) has passed.
WEBHOOK_TIMEOUT_SEC = 10.0
#: Where a failed fault test's node logs are copied: pytest removes its temporary directories of older runs.
EVIDENCE_DIR_ENV = "CODA_FAULT_EVIDENCE_DIR"
#: Lines of each node log a failed fault test shows.
EVIDENCE_TAIL_LINES = 40
#: Kinds of dead letter the report names (most frequent first).
DEAD_LETTER_KINDS_SHOWN = 5


# -- the executor (runs inside the dramatiq worker) -------------------------------------------------


def _log(line: str) -> None:
    path = os.environ.get("FAULT_EXECUTOR_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class TaggedSleepExecutor:
    """Sleeps ``FAULT_EXECUTOR_SEC`` per job and logs each run's start and end with the job's tag."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, ir: Any, shots: int) -> dict[str, Any]:
        tag = ir.metadata.source_hash
        _log(f"start {tag} {time.time():.6f}")
        time.sleep(self.seconds)
        _log(f"end {tag} {time.time():.6f}")
        return {
            "counts": {"0" * len(ir.measurements): shots},
            "execution_time_ms": self.seconds * 1000,
            "shots_completed": shots,
        }


def create_executor() -> TaggedSleepExecutor:
    return TaggedSleepExecutor(float(os.environ.get("FAULT_EXECUTOR_SEC", "0.03")))


# -- a cloud Redis that survives a crash ---------------------------------------------------------------


def _persistent_redis_class() -> Any:
    from coda_bridge.devtools.localredis import LocalRedis

    class PersistentRedis(LocalRedis):
        """A private redis-server with an append-only file fsynced at every write, in a kept directory."""

        def __init__(self, data_dir: Path) -> None:
            super().__init__()
            self.data_dir = data_dir
            data_dir.mkdir(parents=True, exist_ok=True)

        def start(self) -> PersistentRedis:
            import redis

            args = [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(self.data_dir),
                "--daemonize", "no",
                "--loglevel", "warning",
            ]  # fmt: skip
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            probe = redis.Redis(port=self.port, socket_connect_timeout=0.2)
            deadline = time.monotonic() + 15
            try:
                while True:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"redis-server exited at start ({self.process.returncode})")
                    try:
                        probe.ping()
                        return self
                    except redis.exceptions.BusyLoadingError:
                        pass
                    except redis.ConnectionError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not answer on port {self.port}")
                    time.sleep(0.02)
            finally:
                probe.close()

        def crash(self) -> None:
            """SIGKILL the server: no shutdown, only what the append-only file already holds survives."""
            if self.process is not None:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
                self.process = None

    return PersistentRedis


# -- the scenario --------------------------------------------------------------------------------------


@dataclass
class FaultPlan:
    """What the scenario does; times are seconds from the start of submissions."""

    jobs: int = 300
    seed: int = 20261126
    submit_span_sec: float = 40.0
    executor_sec: float = 0.1
    #: Jobs submitted at once shortly before the cloud Redis crash, so the executor is busy through it.
    burst_jobs: int = 40
    burst_lead_sec: float = 1.0
    kills_per_type: int = 3
    chaos_start_sec: float = 2.0
    chaos_end_sec: float = 45.0
    #: Shortest time between two kills of one process type (it must be back first).
    kill_spacing_sec: float = 5.0
    restart_delay_sec: tuple[float, float] = (0.3, 2.0)
    redis_crash_at_sec: tuple[float, float] = (15.0, 30.0)
    redis_down_sec: float = 2.0
    outage_start_sec: float = 8.0
    outage_sec: float = 30.0
    outage_status: int = 503
    refused_status: int = 400
    results_timeout_sec: float = 120.0
    settle_sec: float = 5.0
    #: Whether the cloud's Redis crashes once (at ``redis_crash_at_sec``).
    cloud_redis_crash: bool = True
    #: Whether the 503 window opens at all.
    webhook_outage: bool = True
    #: What happens to the local broker Redis once, mid-run: None, "kill" (SIGKILL, restarted empty on
    #: the same port after ``broker_down_sec``), "flush" (FLUSHALL) or "pause" (SIGSTOP for
    #: ``broker_down_sec``: unreachable, every connection hangs, then SIGCONT) or "oom" (``maxmemory``
    #: under its used memory with ``noeviction`` for ``broker_down_sec``: it answers and refuses writes)
    #: or "failover" (the broker is a Sentinel deployment, :class:`LocalSentinel`: its primary is killed
    #: with SIGKILL and the sentinels promote the replica).
    broker_fault: str | None = None
    broker_fault_at_sec: float = 12.0
    #: With "failover": the password of the Sentinel deployment's primary and replica (in the broker URL).
    broker_password: str | None = None
    broker_down_sec: float = 2.0
    #: How the node runs: "procfile" (the repo Procfile's own lines, ``coda-bridge bridge`` and the
    #: ``dramatiq`` workers, each killed and started again by the scenario), "start" (``coda-bridge
    #: start``: its supervisor starts a killed part again) or "one-process" (``start --one-process``:
    #: the one process is killed and started again).
    mode: str = "procfile"

    @property
    def killed_types(self) -> tuple[str, ...]:
        """The processes the scenario kills: each type of the node's, or its one process."""
        return ("node",) if self.mode == "one-process" else KILLED_TYPES

    def broker_fault_row(self) -> str:
        if self.broker_fault == "kill":
            return f"kill -9, restarted without persistence after {self.broker_down_sec:g} s"
        if self.broker_fault == "pause":
            return f"unreachable (SIGSTOP) for {self.broker_down_sec:g} s"
        if self.broker_fault == "failover":
            return "Sentinel: primary killed -9, the replica promoted (3 sentinels, quorum 2)"
        if self.broker_fault == "oom":
            return f"at maxmemory with noeviction (refusing writes) for {self.broker_down_sec:g} s"
        return self.broker_fault or "none"


@dataclass
class FaultReport:
    """What happened, and the counts the guarantees are judged on."""

    plan: FaultPlan
    submitted: list[str] = field(default_factory=list)
    refused_job: str = ""
    refused_state: str | None = None
    refused_attempts: int = 0
    lost: list[str] = field(default_factory=list)
    runs: int = 0
    jobs_run_more_than_once: int = 0
    runs_after_delivery: list[str] = field(default_factory=list)
    concurrent_runs: list[str] = field(default_factory=list)
    duplicate_deliveries: int = 0
    wrong_results: list[str] = field(default_factory=list)
    not_terminal_status: list[str] = field(default_factory=list)
    outage_answers: int = 0
    dead_letters: int = 0
    #: Dead letters by "queue/actor: last error line" (what failed them), counted.
    dead_letter_kinds: Counter[str] = field(default_factory=Counter)
    submit_retries: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    events: list[tuple[float, str]] = field(default_factory=list)
    seconds_to_all_results: float = 0.0
    total_seconds: float = 0.0
    #: The longest time between two jobs' first accepted results (how long a broker failover stalled).
    longest_delivery_gap_sec: float = 0.0

    def rows(self) -> list[list[Any]]:
        kills = ", ".join(f"{name} {self.kills[name]}" for name in self.plan.killed_types)
        refused = f"{self.refused_state or 'not terminal'} after {self.refused_attempts} attempt(s)"
        outage = "none"
        if self.plan.webhook_outage:
            outage = f"{self.plan.outage_sec:g} s ({self.outage_answers} answers)"
        return [
            ["jobs submitted (reached the stream)", len(self.submitted)],
            ["kill -9 and restart, per process type", kills],
            ["cloud Redis crash (SIGKILL) and restart",
             f"1, down {self.plan.redis_down_sec:g} s" if self.plan.cloud_redis_crash else "none"],
            ["broker Redis, mid-run", self.plan.broker_fault_row()],
            [f"simulator answering {self.plan.outage_status} to every webhook",
             outage],
            [f"job answered {self.plan.refused_status} (final)", refused],
            ["jobs lost (must be 0)", len(self.lost)],
            ["executor runs in all", self.runs],
            ["jobs run more than once (killed mid-run)", self.jobs_run_more_than_once],
            ["runs after a delivered result (must be 0)", len(self.runs_after_delivery)],
            ["two runs of one job at once (must be 0)", len(self.concurrent_runs)],
            ["duplicate deliveries (reported)", self.duplicate_deliveries],
            ["results with wrong content (must be 0)", len(self.wrong_results)],
            ["status hashes not terminal", len(self.not_terminal_status)],
            ["dead-lettered messages", self.dead_letters],
            ["seconds from first submit to last result", f"{self.seconds_to_all_results:.1f}"],
        ] + ([["longest pause between two results, s", f"{self.longest_delivery_gap_sec:.1f}"]]
             if self.plan.broker_fault == "failover" else []) + self._dead_letter_rows()  # fmt: skip

    def _dead_letter_rows(self) -> list[list[Any]]:
        """What failed the dead letters, most frequent first (no row when there are none)."""
        if not self.dead_letter_kinds:
            return []
        kinds = self.dead_letter_kinds.most_common(DEAD_LETTER_KINDS_SHOWN)
        return [["dead letters by queue/actor: last error", "; ".join(f"{n} {kind}" for kind, n in kinds)]]

    def ok(self) -> bool:
        return (
            not (self.lost or self.runs_after_delivery or self.concurrent_runs or self.wrong_results)
            and self.refused_state == "failed"
        )


def stack_env(workdir: Path, plan: FaultPlan) -> dict[str, str]:
    """Settings of the node under test: short timeouts so recovery fits in the run."""
    return {
        "CODA_EXECUTOR_FACTORY": "fault_support:create_executor",
        "FAULT_EXECUTOR_LOG": str(workdir / "fault-executor.log"),
        "FAULT_EXECUTOR_SEC": str(plan.executor_sec),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])),
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_VPN_CHECK_INTERVAL_SEC": "2",
        "CODA_WORKER_HEARTBEAT_TIMEOUT_SEC": "5",
        "CODA_CLAIM_IDLE_SEC": "5",
        "CODA_CLAIM_LEASE_SEC": "3",  # a killed jobs worker's job runs again 3 s on (15 cancel polls)
        "CODA_WEBHOOK_MAX_BACKOFF_SEC": "2",
        "CODA_WEBHOOK_MAX_RETRIES": "200",
        "CODA_WEBHOOK_TIMEOUT_SEC": str(WEBHOOK_TIMEOUT_SEC),
        "CODA_JOB_TIME_LIMIT_SEC": "30",
    }


class _Chaos(threading.Thread):
    """Runs the seeded schedule of kills, restarts and the Redis crash against a live stack."""

    def __init__(self, stack: Any, plan: FaultPlan, t0: float, submit_lock: threading.Lock) -> None:
        super().__init__(name="fault-chaos", daemon=True)
        self.stack, self.plan, self.t0, self.submit_lock = stack, plan, t0, submit_lock
        self.events: list[tuple[float, str]] = []
        self.kills: Counter[str] = Counter()
        self.error: BaseException | None = None
        rng = random.Random(plan.seed)
        schedule: list[tuple[float, str, str]] = []
        for name in plan.killed_types:
            for moment in self._spaced(rng, plan.kills_per_type):
                schedule.append((moment, "kill", name))
                schedule.append((moment + rng.uniform(*plan.restart_delay_sec), "start", name))
        self.redis_crash_at = rng.uniform(*plan.redis_crash_at_sec)
        if plan.cloud_redis_crash:
            schedule.append((self.redis_crash_at, "redis", "cloud"))
        if plan.broker_fault:
            schedule.append((plan.broker_fault_at_sec, "broker", plan.broker_fault))
        self.schedule = sorted(schedule)

    def _spaced(self, rng: random.Random, count: int) -> list[float]:
        plan = self.plan
        for _ in range(1000):
            moments = sorted(rng.uniform(plan.chaos_start_sec, plan.chaos_end_sec) for _ in range(count))
            if all(b - a >= plan.kill_spacing_sec for a, b in itertools.pairwise(moments)):
                return moments
        raise ValueError("cannot space the kills; widen the chaos window")

    def note(self, what: str) -> None:
        self.events.append((time.monotonic() - self.t0, what))

    def run(self) -> None:
        try:
            for moment, action, name in self.schedule:
                delay = self.t0 + moment - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if action == "kill":
                    self.stack.kill9(name)
                    self.kills[name] += 1
                    self.note(f"kill -9 {name}")
                elif action == "start":
                    self.stack.start_process(name)
                    self.note(f"restart {name}")
                elif action == "broker":
                    self._broker_fault(name)
                else:
                    with self.submit_lock:
                        self.stack.cloud_redis.crash()
                        self.note("cloud Redis crashed (SIGKILL)")
                        time.sleep(self.plan.redis_down_sec)
                        self.stack.cloud_redis.start()
                        self.note("cloud Redis back")
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    def _broker_fault(self, kind: str) -> None:
        broker = self.stack.broker_redis
        if kind == "flush":
            broker.client().flushall()
            self.note("broker Redis flushed (FLUSHALL)")
        elif kind == "kill":
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait()
            broker.process = None
            self.note("broker Redis killed (SIGKILL), no persistence")
            time.sleep(self.plan.broker_down_sec)
            broker.start()
            self.note("broker Redis back, empty, on the same port")
        elif kind == "pause":
            broker.process.send_signal(signal.SIGSTOP)
            self.note(f"broker Redis unreachable (SIGSTOP) for {self.plan.broker_down_sec:g} s")
            try:
                time.sleep(self.plan.broker_down_sec)
            finally:
                broker.process.send_signal(signal.SIGCONT)
            self.note("broker Redis answers again (SIGCONT)")
        elif kind == "failover":
            old = broker.kill_primary()
            killed = time.monotonic()
            self.note(f"broker primary (port {old}) killed (SIGKILL)")
            new = broker.wait_promoted(old)
            self.note(f"replica (port {new}) promoted {time.monotonic() - killed:.1f} s after the kill")
        elif kind == "oom":
            client = broker.client()
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
            self.note(f"broker Redis at maxmemory (noeviction) for {self.plan.broker_down_sec:g} s")
            try:
                time.sleep(self.plan.broker_down_sec)
            finally:
                client.config_set("maxmemory", "0")
            self.note("broker Redis takes writes again")
        else:
            raise ValueError(f"unknown broker fault {kind!r}")


class _Outage:
    """The webhook outage: every webhook answered ``outage_status`` for ``outage_sec``; a window that closed
    before the node attempted any delivery (a busy machine) opens again, so the outage is always met."""

    def __init__(self, cloud: Any, qpu_id: str, plan: FaultPlan, chaos: _Chaos) -> None:
        self.cloud, self.qpu_id, self.plan, self.chaos = cloud, qpu_id, plan, chaos
        self.closes: float | None = None
        self.met = False

    def open(self) -> None:
        self.cloud.set_fault("webhook", self.plan.outage_status, seconds=self.plan.outage_sec)
        again = " again: none was met" if self.closes is not None else ""
        self.chaos.note(f"webhooks answer {self.plan.outage_status} for {self.plan.outage_sec:g} s{again}")
        self.closes = time.monotonic() + self.plan.outage_sec

    def over(self) -> bool:
        """Whether the window opened, closed and was met; opens it again when it closed unmet."""
        if self.met:
            return True
        if self.closes is None or time.monotonic() < self.closes:
            return False
        hooks = self.cloud.webhooks(qpu_id=self.qpu_id)
        self.met = any(h.get("fault") and h.get("status") == self.plan.outage_status for h in hooks)
        if not self.met:
            self.open()
        return self.met


def executor_runs(path: Path) -> dict[str, list[tuple[float, float | None]]]:
    """Per tag, each run's (start, end or None when the run was killed)."""
    runs: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    if not path.exists():
        return runs
    for line in path.read_text().splitlines():
        kind, tag, moment = line.split(" ")
        if kind == "start":
            runs[tag].append((float(moment), None))
        elif kind == "end":
            for index in range(len(runs[tag]) - 1, -1, -1):
                start, end = runs[tag][index]
                if end is None and start <= float(moment):
                    runs[tag][index] = (start, float(moment))
                    break
    return runs


def run_fault_scenario(plan: FaultPlan, workdir: Path, *, progress: Any = None) -> FaultReport:
    """Start a node in ``workdir``, run the plan against it, stop everything, and account for every job."""
    from coda_bridge.devtools.stack import LocalStack, wait_until
    from coda_bridge.queueing.redis_broker import broker_namespace

    say = progress or (lambda text: None)
    report = FaultReport(plan)
    procfile = PROCFILE if plan.mode == "procfile" else None
    stack = LocalStack(workdir, env=stack_env(workdir, plan), mode=plan.mode, procfile=procfile)
    stack.cloud_redis = _persistent_redis_class()(workdir / "cloud-redis-data")
    if plan.broker_fault == "failover":
        from coda_bridge.devtools.localsentinel import LocalSentinel

        stack.broker_redis = LocalSentinel(password=plan.broker_password)
    began = time.monotonic()
    try:
        stack.start()
        say(f"node up in {time.monotonic() - began:.1f} s; {plan.jobs} jobs over {plan.submit_span_sec:g} s")
        cloud = stack.cloud
        tags = [f"fault-{index:04d}" for index in range(plan.jobs)]
        job_ids = [f"job-{tag}" for tag in tags]
        report.refused_job = job_ids[random.Random(plan.seed).randrange(plan.jobs // 4, plan.jobs // 2)]
        # first in the fault list, so it wins over the outage window for that job
        cloud.set_fault("webhook", plan.refused_status, count=1, job_id=report.refused_job)
        submit_lock = threading.Lock()
        t0 = time.monotonic()
        chaos = _Chaos(stack, plan, t0, submit_lock)
        chaos.start()
        outage = _Outage(cloud, stack.qpu_id, plan, chaos)
        steady = plan.jobs - plan.burst_jobs
        burst_at = chaos.redis_crash_at - plan.burst_lead_sec
        offsets = sorted(
            [plan.submit_span_sec * index / steady for index in range(steady)] + [burst_at] * plan.burst_jobs
        )
        for tag, job_id, offset in zip(tags, job_ids, offsets, strict=True):
            due = t0 + offset
            if plan.webhook_outage:
                if outage.closes is None and time.monotonic() - t0 >= plan.outage_start_sec:
                    outage.open()
                outage.over()
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            with submit_lock:
                cloud.submit(stack.qpu_id, _bell(tag), 10, job_id=job_id, expect="noop")
            report.submitted.append(job_id)
        if plan.webhook_outage:
            if outage.closes is None:
                outage.open()
            wait_until(outage.over, plan.results_timeout_sec, f"the {plan.outage_status} window to be met")
        chaos.join(plan.chaos_end_sec + 30)
        if chaos.error is not None:
            raise chaos.error
        # every process must be running again before the final wait
        for name in plan.killed_types:
            if not stack.running(name):
                stack.start_process(name)
        say("chaos over; waiting for every result")
        expected = set(report.submitted) - {report.refused_job}
        deadline = time.monotonic() + plan.results_timeout_sec
        while True:
            results = cloud.results(stack.qpu_id)
            missing = [j for j in expected if results.get(j) is None]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report.seconds_to_all_results = time.monotonic() - t0
        # a result the cloud accepted from a process killed before it wrote the job's final state gets
        # that state from the delivery retried once the dead process's delivery lease lapses
        _wait_terminal(stack, report.submitted, TERMINAL_WAIT_SEC)
        time.sleep(plan.settle_sec)  # late duplicates
        _account(report, stack, chaos, workdir, broker_namespace(stack.qpu_id))
    finally:
        stack.stop(drain=False)  # thrown away whole: killed, not drained
    report.total_seconds = time.monotonic() - began
    return report


#: Longest wait for every job's final state after its result: a delivery lease (the webhook timeout
#: plus its margin) and time to spare on a busy machine.
TERMINAL_WAIT_SEC = WEBHOOK_TIMEOUT_SEC + 50.0


def _states(stack: Any, job_ids: list[str]) -> dict[str, Any]:
    """Each job's state in the cloud's status hash."""
    pipe = stack.cloud_redis.client().pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"qpu:job:{job_id}:status", "state")
    return dict(zip(job_ids, pipe.execute(), strict=True))


def _wait_terminal(stack: Any, job_ids: list[str], timeout_sec: float) -> None:
    """Poll until every job's state is final, or the time is up (the report then names the others)."""
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if all(state in ("completed", "failed") for state in _states(stack, job_ids).values()):
            return
        time.sleep(0.5)


def _account(report: FaultReport, stack: Any, chaos: _Chaos, workdir: Path, namespace: str) -> None:
    cloud = stack.cloud
    plan = report.plan
    report.kills = chaos.kills
    report.events = chaos.events
    views = {v["job_id"]: v for v in cloud.jobs(stack.qpu_id, full=True)}
    hooks = cloud.webhooks(qpu_id=stack.qpu_id)
    report.outage_answers = sum(1 for h in hooks if h.get("fault") and h.get("status") == plan.outage_status)
    report.refused_attempts = sum(1 for h in hooks if h.get("job_id") == report.refused_job)
    states = _states(stack, report.submitted)
    report.refused_state = states.get(report.refused_job)
    runs = executor_runs(workdir / "fault-executor.log")
    report.runs = sum(len(r) for r in runs.values())
    report.jobs_run_more_than_once = sum(1 for r in runs.values() if len(r) > 1)
    firsts = sorted(float(v["first_delivery_at"]) for v in views.values() if v.get("first_delivery_at"))
    report.longest_delivery_gap_sec = max((b - a for a, b in itertools.pairwise(firsts)), default=0.0)
    for job_id in report.submitted:
        view = views.get(job_id) or {}
        tag = job_id.removeprefix("job-")
        deliveries = view.get("deliveries") or []
        if job_id == report.refused_job:
            if deliveries:
                report.wrong_results.append(f"{job_id}: accepted although answered {plan.refused_status}")
        elif not deliveries:
            report.lost.append(job_id)
        report.duplicate_deliveries += max(0, len(deliveries) - 1)
        if view.get("content_mismatch") or view.get("expect_ok") is False:
            report.wrong_results.append(job_id)
        if states.get(job_id) not in ("completed", "failed"):
            report.not_terminal_status.append(f"{job_id}: {states.get(job_id)}")
        first = float(view["first_delivery_at"]) if view.get("first_delivery_at") else None
        tag_runs = sorted(runs.get(tag, []))
        if first is not None:
            report.runs_after_delivery += [
                f"{job_id} at +{s - first:.3f} s" for s, _ in tag_runs if s > first
            ]
        for (_, end), (later, _) in itertools.pairwise(tag_runs):
            if end is not None and later < end:
                report.concurrent_runs.append(job_id)
    broker = stack.broker_redis.client()
    report.dead_letters = sum(int(broker.zcard(f"{namespace}:{q}.XQ")) for q in ("jobs", "results"))
    report.dead_letter_kinds = dead_letter_kinds(broker, namespace)


def dead_letter_kinds(broker: Any, namespace: str) -> Counter[str]:
    """The dead letters of the jobs and results queues by queue, actor and the last line of their error."""
    from dramatiq.message import Message  # imported late, as the rest: this module is also the executor

    from coda_bridge.state.broker_keys import dead_messages_key

    kinds: Counter[str] = Counter()
    for queue in ("jobs", "results"):
        for _, data in broker.hscan_iter(dead_messages_key(namespace, queue), count=500):
            message = Message.decode(data.encode() if isinstance(data, str) else data)
            lines = str(message.options.get("traceback") or "no traceback").strip().splitlines()
            kinds[f"{queue}/{message.actor_name}: {lines[-1].strip()[:200]}"] += 1
    return kinds


def keep_evidence(workdir: Path, name: str) -> str:
    """Copy a failed run's node logs where pytest's clean-up of older runs does not reach; say where, and
    show each one's last lines (the process logs name what failed, the dead letters' counts say how often).

    The folder is ``$CODA_FAULT_EVIDENCE_DIR``, else ``coda-fault-evidence`` in the temporary directory.
    Only ``*.log`` files are copied: the node's state (its private key) stays behind.
    """
    root = Path(os.environ.get(EVIDENCE_DIR_ENV) or Path(tempfile.gettempdir()) / "coda-fault-evidence")
    kept = root / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    kept.mkdir(parents=True, exist_ok=True)
    shown = [f"node logs kept in {kept}"]
    for log in sorted(workdir.glob("*.log")):
        shutil.copy2(log, kept / log.name)
        tail = log.read_text(errors="replace").splitlines()[-EVIDENCE_TAIL_LINES:]
        shown += [f"--- {log.name}, last {len(tail)} lines", *tail]
    return "\n".join(shown)
