"""Soak: jobs whose executor process crashes, and jobs that hang past their limit, beside good jobs.

``-n`` bad-mix jobs (1 in 10 segfaults its process, 1 in 10 never returns
and ignores its cancel, the rest answer at once) interleaved with ``-n``
good jobs, a 2 s time limit and a 1 s stop grace, heartbeats every second.
Reports, from the simulator's records: one result per job, the good jobs'
outcome and latency, each bad job's outcome, and the largest heartbeat gap.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

from benchlib import REPO_ROOT, append_results, markdown_table, python_path, start_stack, wait_idle_workers

SHOTS = 10
SUPPORT = REPO_ROOT / "tests" / "support"


def _bell(mode: str, tag: str) -> dict[str, Any]:
    return {
        "version": "1.0",
        "target": "cz",
        "num_qubits": 2,
        "gates": [
            {"gate": "ry", "qubits": [0], "params": [1.5707963]},
            {"gate": "cz", "qubits": [0, 1], "params": []},
        ],
        "measurements": [0, 1],
        "metadata": {"source_hash": f"{mode}:{tag}", "compiled_at": "2026-01-01T00:00:00Z"},
    }


def _kind(index: int) -> str:
    return {3: "segv", 7: "stuck"}.get(index % 10, "ok")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=300, help="bad-mix jobs, and as many good ones (default 300)")
    parser.add_argument("--limit", type=float, default=2.0, help="job_time_limit_sec (default 2)")
    parser.add_argument("--grace", type=float, default=1.0, help="executor_stop_grace_sec (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for every result")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    env = {
        "CODA_EXECUTOR_FACTORY": "coda_test_executor:create_executor",
        "PYTHONPATH": python_path(SUPPORT),
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_JOB_TIME_LIMIT_SEC": str(args.limit),
        "CODA_EXECUTOR_STOP_GRACE_SEC": str(args.grace),
    }
    stack = start_stack(env)
    try:
        wait_idle_workers(2.0)
        cloud = stack.cloud
        cloud.wait_for_heartbeats(stack.qpu_id, count=2, timeout_sec=30)
        kinds: dict[str, str] = {}
        started = time.time()
        for index in range(args.n):
            bad = _kind(index)
            kinds[cloud.submit(stack.qpu_id, _bell(bad, f"mix-{index}"), SHOTS)] = bad
            kinds[cloud.submit(stack.qpu_id, _bell("ok", f"good-{index}"), SHOTS)] = "good"
        deadline = time.monotonic() + args.timeout
        while True:
            results = cloud.results(stack.qpu_id)
            if all(results.get(job_id) for job_id in kinds) or time.monotonic() > deadline:
                break
            time.sleep(1)
        finished = time.time()
        time.sleep(2)  # late duplicates
        stats = cloud.stats(stack.qpu_id)
        beats = sorted(float(b["received_at"]) for b in cloud.heartbeats(stack.qpu_id, accepted=True))
        pending: Any = stack.cloud_redis.client().xpending(
            f"qpu:{stack.qpu_id}:jobs", f"qpu:{stack.qpu_id}:workers"
        )
    finally:
        stack.stop()
    outcome: dict[str, dict[str, int]] = {}
    for job_id, kind in kinds.items():
        body = results.get(job_id)
        status = "none" if body is None else str(body["status"])
        if kind == "segv" and body is not None and "died with signal 11" not in str(body.get("error")):
            status += " (other error)"
        if kind == "stuck" and body is not None and "time limit" not in str(body.get("error")):
            status += " (other error)"
        outcome.setdefault(kind, {}).setdefault(status, 0)
        outcome[kind][status] += 1
    gaps = [b - a for a, b in itertools.pairwise(t for t in beats if started - 1 <= t <= finished)]
    rows = [[kind, sum(counts.values()), ", ".join(f"{s}: {c}" for s, c in sorted(counts.items()))]
            for kind, counts in sorted(outcome.items())]  # fmt: skip
    table = markdown_table(["jobs", "count", "results"], rows)
    figures = markdown_table(
        ["figure", "value"],
        [
            ["jobs", len(kinds)],
            ["first XADD to the last result, s", f"{finished - started:.1f}"],
            ["duplicate deliveries", stats.get("duplicate_deliveries", "-")],
            ["entries pending in the stream at the end", int(pending["pending"])],
            ["heartbeats received meanwhile", len(gaps) + 1 if gaps else 0],
            ["largest heartbeat gap, s", f"{max(gaps):.3f}" if gaps else "-"],
        ],
    )
    append_results(
        "Executor soak: crashes and hangs beside good jobs (issue 21)",
        [table, figures],
        [
            "1 in 10 of the mixed jobs segfaults its process (3 runs, then failed), 1 in 10 never",
            f"returns and ignores its cancel (failed at the {args.limit:g} s limit, its process killed",
            f"{args.grace:g} s later); every mixed job is followed by a good one. One jobs worker, the",
            "test executor, heartbeats every 1 s.",
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
