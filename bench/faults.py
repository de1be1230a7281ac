"""The fault suite's scenario as a benchmark run: prints its table and appends it to RESULTS.md.

During a run of 300 short jobs: kill -9 and restart each process type
(bridge, jobs, results, control) at seeded random moments, crash the cloud's
Redis (SIGKILL; it keeps an fsync-always append-only file) and restart it,
make the simulator answer 503 to every webhook for 30 s, and 400 to one
job's; with ``--broker-fault`` also kill, flush, pause the broker Redis or
hold it at ``maxmemory`` under ``noeviction`` (``oom``: it refuses writes).
The scenario itself is ``tests/support/fault_support.py``; the test
``tests/fault/test_fault_suite.py`` runs the same one and asserts on it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from benchlib import REPO_ROOT, append_results, markdown_table

sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
_scenario = importlib.import_module("fault_support")  # the same module the fault test uses
FaultPlan = _scenario.FaultPlan
run_fault_scenario = _scenario.run_fault_scenario


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
