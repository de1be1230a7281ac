"""Scaling by executor worker processes: a 20 ms executor (no device lock), 1, 2 and 4 ``jobs`` processes.

One node; the extra executor workers are started as ``jobs#2``, ``jobs#3``...
(the same command line as ``jobs``, as ``honcho start -c jobs=4`` would run).
For each worker count, N jobs are XADDed at once and jobs/s is measured from
the first XADD to the last webhook (simulator clocks).
"""

from __future__ import annotations

import argparse
import time

from benchlib import (
    BENCH_DIR,
    append_results,
    job_views,
    latency_summary,
    markdown_table,
    noop_circuit,
    python_path,
    start_stack,
    start_worker,
    throughput,
    wait_delivered,
    wait_idle_workers,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=800, help="jobs per worker count (default 800)")
    parser.add_argument("--executor-ms", type=float, default=20.0, help="time per job (default 20 ms)")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]

    env = {
        "CODA_EXECUTOR_FACTORY": "bench_executors:create_sleep_executor",
        "BENCH_EXECUTOR_MS": str(args.executor_ms),
        "PYTHONPATH": python_path(BENCH_DIR),
    }
    stack = start_stack(env)
    results: list[tuple[int, float, float, dict[str, float]]] = []
    try:
        wait_idle_workers(2.0)
        warm = stack.cloud.submit_bulk(
            stack.qpu_id, 10, noop_circuit(), 100, expect="noop", job_id_prefix="w-"
        )
        stack.cloud.wait_for_results(warm, timeout_sec=60)
        delivered = len(warm)
        running = 1
        for count in sorted(counts):
            while running < count:
                running += 1
                start_worker(stack, f"jobs#{running}")
            time.sleep(1.0)
            ids = stack.cloud.submit_bulk(
                stack.qpu_id, args.n, noop_circuit(), 100, expect="noop", job_id_prefix=f"w{count}-"
            )
            delivered += args.n
            expected = args.n * args.executor_ms / 1000 / count
            wait_delivered(stack.cloud, stack.qpu_id, delivered, timeout_sec=60 + 4 * expected)
            rate, seconds = throughput(job_views(stack.cloud, stack.qpu_id, ids))
            lat = latency_summary(float(v["latency_ms"]) for v in job_views(stack.cloud, stack.qpu_id, ids))
            print(f"{count} worker(s): {rate:.1f} jobs/s over {seconds:.2f} s", flush=True)
            results.append((count, rate, seconds, lat))
        stats = stack.cloud.stats(stack.qpu_id)
    finally:
        stack.stop()

    base = results[0][1]
    ideal_one = 1000 / args.executor_ms
    rows = [
        [
            count,
            round(rate, 1),
            f"{rate / base:.2f}x",
            f"{100 * rate / (ideal_one * count):.0f} %",
            round(sec, 2),
        ]
        for count, rate, sec, _ in results
    ]
    table = markdown_table(
        ["executor worker processes", "jobs/s", "ratio to 1", "of ideal (count x 1000/ms)", "seconds"], rows
    )
    four = next((rate for count, rate, _, _ in results if count == 4), None)
    goal_rows = []
    if four is not None and 1 in counts:
        met = four / base >= 3.5
        goal_rows.append(["4 workers vs 1", ">= 3.5x", f"{four / base:.2f}x", "yes" if met else "no"])
    goals = markdown_table(["goal (issue 7)", "target", "measured", "met"], goal_rows)
    notes = [
        f"{args.n} jobs per worker count, executor sleeping {args.executor_ms:g} ms a job (no CPU, no lock);",
        "each worker process runs the `jobs` command line (1 thread, executor_concurrency 1).",
        f"All {stats['delivered']} jobs delivered; duplicates {stats['duplicate_deliveries']},",
        f"wrong results {stats['expect_failures']}.",
    ]
    append_results("Scaling by executor worker processes", [table, goals], notes, write=not args.no_write)


if __name__ == "__main__":
    main()
