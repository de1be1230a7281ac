"""The fault suite's scenario as a benchmark run: prints its table and appends it to RESULTS.md.

During a run of 300 short jobs: kill -9 and restart each process type
(bridge, jobs, results, control) at seeded random moments, crash the cloud's
Redis (SIGKILL; it keeps an fsync-always append-only file) and restart it,
make the simulator answer 503 to every webhook for 30 s, and 400 to one
job's; with ``--broker-fault`` also kill, flush, pause the broker Redis or
hold it at ``maxmemory`` under ``noeviction`` (``oom``: it refuses writes).
The scenario itself is ``tests/support/fault_support.py``; the test
``tests/fault/test_fault_suite.py`` runs the same one and asserts on it.

Faults of the host, one scenario each (``--scenario``): ``clock`` runs a
node whose clock is 10 minutes fast against the simulator, then against one
that sends no usable ``Date``; ``cloud-down`` makes the simulator's HTTP API
answer 503 to everything for ``--down`` seconds while results wait, and
times how soon they arrive once it answers again.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from benchlib import REPO_ROOT, append_results, markdown_table, noop_circuit, start_stack, wait_delivered

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.stack import LocalStack, wait_until

sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
_scenario = importlib.import_module("fault_support")  # the same module the fault test uses
FaultPlan = _scenario.FaultPlan
run_fault_scenario = _scenario.run_fault_scenario


#: How far ahead the node's clock runs in the clock scenario, in seconds.
SKEW_SEC = 600


def _dead_letters(stack: LocalStack) -> list[str]:
    env = {**os.environ, **stack.env()}
    listing = [sys.executable, "-m", "coda_bridge", "replay", "--list"]
    out = subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "\t" in line]


def clock_scenario(jobs: int, write: bool) -> None:
    """A node 10 minutes fast: accepted after correction; with no Date, kept and replayable."""
    fast = {"CODA_FAILPOINTS": f"clock.skew_sec={SKEW_SEC}", "CODA_HEARTBEAT_INTERVAL_SEC": "1"}
    rows: list[list[Any]] = []
    stack = start_stack(fast, web=True)
    try:
        started = time.monotonic()
        for _ in range(jobs):
            stack.cloud.submit(stack.qpu_id, noop_circuit(), 10)
        wait_delivered(stack.cloud, stack.qpu_id, jobs, 120)
        took = time.monotonic() - started
        ready = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).json()
        accepted_beats = len(stack.cloud.heartbeats(stack.qpu_id, accepted=True))
        refused_beats = len(stack.cloud.heartbeats(None, accepted=False))  # a refused one names no QPU
        stats = stack.cloud.stats(stack.qpu_id)
        refused = len(stack.cloud.webhooks(qpu_id=None, accepted=False))
        rows += [
            ["node clock ahead of the cloud's", f"{SKEW_SEC} s"],
            ["results accepted (Date header correction)", f"{stats['delivered']} of {jobs} in {took:.1f} s"],
            ["result POSTs refused 401 on the way", refused],
            [
                "heartbeats accepted / refused",
                f"{accepted_beats} / {refused_beats}",
            ],
            ["/ready clock_offset_sec", ready.get("clock_offset_sec")],
            ["dead letters", len(_dead_letters(stack))],
        ]
    finally:
        stack.stop()
    kept = min(jobs, 10)
    stack = start_stack(
        {**fast, "CODA_WEBHOOK_MAX_RETRIES": "3", "CODA_WEBHOOK_MAX_BACKOFF_SEC": "2"},
        devcloud_args=["--no-date"],
    )
    try:
        ids = [stack.cloud.submit(stack.qpu_id, noop_circuit(), 10) for _ in range(kept)]
        wait_until(lambda: len(_dead_letters(stack)) >= kept, 120, "every result dead-lettered")
        dead = _dead_letters(stack)
        refused_jobs = {w.get("job_id") for w in stack.cloud.webhooks(qpu_id=None, accepted=False)}
        statuses = [stack.cloud_redis.client().hget(f"qpu:job:{j}:status", "state") for j in ids]
        pending = stack.cloud_redis.client().xpending(stream_key(stack.qpu_id), group_name(stack.qpu_id))
        stack.children["results"].stop()
        stack.start_process("results", env={"CODA_FAILPOINTS": ""})  # the clock fixed
        env = {**os.environ, **stack.env()}
        subprocess.run(
            [sys.executable, "-m", "coda_bridge", "replay"], env=env, check=True, capture_output=True
        )
        stack.cloud.wait_for_results(ids, timeout_sec=60)
        rows += [
            ["no usable Date: results refused 401 (iat)", f"{len(refused_jobs & set(ids))} of {kept}"],
            [
                "... dead-lettered (replayable), entries pending",
                f"{len(dead)}, {pending['pending']}",
            ],
            [
                "... marked failed or dropped (must be 0)",
                sum(1 for s in statuses if s in (b"failed", "failed")),
            ],
            ["... delivered by `replay` once the clock is right", f"{kept} of {kept}"],
        ]
    finally:
        stack.stop()
    append_results(
        "Fault: the node's clock 10 minutes fast",
        [markdown_table(["figure", "value"], rows)],
        [
            f"{jobs} no-op jobs against the simulator (which checks iat and exp with 5 s leeway); the",
            "clock.skew_sec failpoint moves the clock every node process signs on. Then 10 jobs against a",
            "simulator started with --no-date (webhook retries 3, backoff capped at 2 s).",
        ],
        write=write,
    )


def cloud_down_scenario(jobs: int, down_sec: float, write: bool) -> None:
    """The cloud's HTTP API answers 503 to everything for ``down_sec`` while results wait."""
    stack = start_stack({"CODA_HEARTBEAT_INTERVAL_SEC": "1"}, web=True)
    try:
        stack.cloud.set_fault("all", 503, count=10_000_000)
        started = time.monotonic()
        ids = [stack.cloud.submit(stack.qpu_id, noop_circuit(), 10) for _ in range(jobs)]
        time.sleep(max(0.0, down_sec - (time.monotonic() - started)))  # the outage's length, not a wait
        ready = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).json()
        before = len(stack.cloud.heartbeats(stack.qpu_id, accepted=True))
        stack.cloud.clear_faults()
        back = time.monotonic()
        wait_until(
            lambda: len(stack.cloud.heartbeats(stack.qpu_id, accepted=True)) > before, 60, "a heartbeat"
        )
        beat_after = time.monotonic() - back
        stack.cloud.wait_for_results(ids, timeout_sec=600)
        results_after = time.monotonic() - back
        refused = len(stack.cloud.webhooks(qpu_id=None, accepted=False))
    finally:
        stack.stop()
    rows = [
        ["cloud's HTTP API answering 503 to everything", f"{down_sec:g} s"],
        ["results waiting when it answered again", jobs],
        ["refused delivery attempts during the outage", refused],
        ["/ready during the outage", f"{ready.get('ready')}: {ready.get('reason')}"],
        ["first accepted heartbeat after", f"{beat_after:.1f} s"],
        ["every result delivered after", f"{results_after:.1f} s"],
    ]
    append_results(
        f"Fault: the cloud's HTTP API down {down_sec:g} s, then back",
        [markdown_table(["figure", "value"], rows)],
        ["Default delivery settings (retries 20, backoff up to 300 s); heartbeat every 1 s."],
        write=write,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=["suite", "clock", "cloud-down"], default="suite")
    parser.add_argument("--down", type=float, default=240.0, help="cloud-down: seconds of 503 (default 240)")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds of 503 answers (default 30)")
    parser.add_argument("--kills", type=int, default=3, help="kills per process type (default 3)")
    parser.add_argument("--seed", type=int, default=FaultPlan.seed)
    parser.add_argument("--broker-fault", choices=["kill", "flush", "pause", "oom"], default=None,
                        help="what happens to the broker Redis once, mid-run (default: nothing)")  # fmt: skip
    parser.add_argument("--broker-down", type=float, default=FaultPlan.broker_down_sec,
                        help="seconds the broker fault lasts")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.scenario == "clock":
        clock_scenario(min(args.jobs, 100), not args.no_write)
        return
    if args.scenario == "cloud-down":
        cloud_down_scenario(min(args.jobs, 50), args.down, not args.no_write)
        return

    plan = FaultPlan(
        jobs=args.jobs,
        outage_sec=args.outage,
        kills_per_type=args.kills,
        seed=args.seed,
        broker_fault=args.broker_fault,
        broker_down_sec=args.broker_down,
    )
    workdir = Path(tempfile.mkdtemp(prefix="coda-faults-")) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="coda-faults-") as scratch:
        report = run_fault_scenario(plan, workdir or Path(scratch), progress=lambda t: print(t, flush=True))
    table = markdown_table(["figure", "value"], report.rows())
    events = markdown_table(["at, s", "event"], [[f"{at:.1f}", what] for at, what in report.events])
    notes = [
        f"Seed {plan.seed}; executor sleeps {plan.executor_sec * 1000:g} ms per job; jobs submitted one by",
        f"one over {plan.submit_span_sec:g} s ({plan.burst_jobs} of them at once,",
        f"{plan.burst_lead_sec:g} s before the cloud Redis crash); the 503 window opens at",
        f"{plan.outage_start_sec:g} s. Worker",
        "heartbeat timeout 5 s, claim idle 5 s, webhook backoff capped at 2 s. The cloud Redis keeps an",
        "append-only file (fsync always), so its crash loses no acknowledged XADD; submissions pause while",
        f"it is down. Run took {report.total_seconds:.0f} s. Verdict: {'PASS' if report.ok() else 'FAIL'}.",
    ]
    for label, items in (
        ("lost", report.lost),
        ("runs after delivery", report.runs_after_delivery),
        ("concurrent runs", report.concurrent_runs),
        ("wrong results", report.wrong_results),
        ("status not terminal", report.not_terminal_status),
    ):
        if items:
            notes.append(f"{label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}")
    if workdir:
        notes.append(f"logs kept in {workdir}")
    title = "Fault suite (kill -9, cloud Redis crash, 503 window, one 400)"
    if plan.broker_fault:
        title = f"{title[:-1]}, broker {plan.broker_fault_row()})"
    append_results(title, [table, events], notes, write=not args.no_write)


if __name__ == "__main__":
    main()
