"""Duty cycle: how much of the time the device runs jobs while jobs wait (issue 24).

Measured as the device's owner would: an executor whose every run takes a
fixed time (``time.sleep``, as a driver waiting on hardware) appends its own
start and end stamps to a file; N jobs are XADDed at once.  From the stamps:
duty cycle = busy time / (last end - first start), the gap between one run's
end and the next one's start (p50, p99, max), and the first run's delay after
the first XADD (simulator clock).  Runs for ``coda-bridge start``,
``start --one-process`` and the Procfile's lines, and for coda-node 0.1.1 on
the same simulator (its own QPU, after the coda-bridge rows of the same
executor time; ``--skip-coda-node``), at each executor time.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH_DIR,
    CODA_NODE_VERSION,
    PROCFILE,
    CodaNodeProcess,
    append_results,
    job_views,
    markdown_table,
    noop_circuit,
    percentile,
    python_path,
    start_stack,
    wait_delivered,
    wait_idle_workers,
)

from coda_bridge.devtools.localredis import free_port

WARMUP_JOBS = 10
MODES = ("start", "one-process", "procfile")


def read_stamps(path: Path) -> list[tuple[float, float]]:
    """The runs' (start, end) times, in start order."""
    return sorted(
        (float(a), float(b)) for a, b in (line.split() for line in path.read_text().splitlines() if line)
    )


def duty_figures(stamps: list[tuple[float, float]], first_xadd: float) -> dict[str, float]:
    """Duty cycle, gaps (ms) and the first run's delay after the first XADD (ms)."""
    busy = sum(end - start for start, end in stamps)
    span = stamps[-1][1] - stamps[0][0]
    gaps = sorted(max(0.0, b[0] - a[1]) * 1000 for a, b in itertools.pairwise(stamps))
    return {
        "runs": len(stamps),
        "duty": busy / span,
        "gap_p50": percentile(gaps, 0.50),
        "gap_p99": percentile(gaps, 0.99),
        "gap_max": gaps[-1],
        "first_run_ms": (stamps[0][0] - first_xadd) * 1000,
    }


def measure(
    mode: str, executor_ms: float, n: int, workdir: Path, procfile: Path = PROCFILE
) -> dict[str, float]:
    """One node in ``mode`` with the stamping executor: N jobs at once, the figures from its stamps."""
    stamp_file = workdir / f"stamps-{mode}-{executor_ms:g}.txt"
    env = {
        "CODA_EXECUTOR_FACTORY": "bench_executors:create_stamp_executor",
        "BENCH_EXECUTOR_MS": str(executor_ms),
        "BENCH_STAMP_FILE": str(stamp_file),
        "PYTHONPATH": python_path(BENCH_DIR),
    }
    stack = start_stack(env, mode=mode, procfile=procfile if mode == "procfile" else None)
    try:
        wait_idle_workers(2.0)
        warm = stack.cloud.submit_bulk(
            stack.qpu_id, WARMUP_JOBS, noop_circuit(), 100, expect="noop", job_id_prefix="warm-"
        )
        stack.cloud.wait_for_results(warm, timeout_sec=60)
        time.sleep(1.0)
        stamp_file.write_text("")  # emptied, not removed: each executor process keeps it open
        ids = stack.cloud.submit_bulk(stack.qpu_id, n, noop_circuit(), 100, expect="noop", job_id_prefix="d-")
        wait_delivered(
            stack.cloud, stack.qpu_id, WARMUP_JOBS + n, timeout_sec=60 + 5 * n * executor_ms / 1000
        )
        first_xadd = min(float(v["submitted_at"]) for v in job_views(stack.cloud, stack.qpu_id, ids))
        stats = stack.cloud.stats(stack.qpu_id)
    finally:
        stack.stop()
    figures = duty_figures(read_stamps(stamp_file), first_xadd)
    figures["duplicates"] = stats["duplicate_deliveries"]
    figures["wrong"] = stats["expect_failures"]
    return figures


def measure_coda_node(executor_ms: float, n: int, workdir: Path) -> dict[str, float]:
    """coda-node 0.1.1 with the same stamping executor, on a stack whose own node is stopped."""
    stamp_file = workdir / f"stamps-coda-node-{executor_ms:g}.txt"
    stack = start_stack()
    try:
        stack.stop_node()
        qpu = "qpu-coda-node"
        stack.cloud.create_qpu(
            qpu, display_name="coda-node peer", native_gate_set="cz", num_qubits=5,
            connection_mode="https", redis_url=stack.cloud_redis.url,
        )  # fmt: skip
        env = {
            "CODA_EXECUTOR_FACTORY": "bench_executors:create_stamp_executor",
            "BENCH_EXECUTOR_MS": str(executor_ms),
            "BENCH_STAMP_FILE": str(stamp_file),
            "PYTHONPATH": str(BENCH_DIR),
        }
        node = CodaNodeProcess(stack, qpu, port=free_port(), env=env)
        node.start()
        try:
            time.sleep(2.0)
            warm = stack.cloud.submit_bulk(
                qpu, WARMUP_JOBS, noop_circuit(), 100, expect="noop", job_id_prefix="warm-"
            )
            stack.cloud.wait_for_results(warm, timeout_sec=60)
            time.sleep(1.0)
            stamp_file.write_text("")  # emptied, not removed: each executor process keeps it open
            ids = stack.cloud.submit_bulk(qpu, n, noop_circuit(), 100, expect="noop", job_id_prefix="d-")
            wait_delivered(stack.cloud, qpu, WARMUP_JOBS + n, timeout_sec=60 + 20 * n * executor_ms / 1000)
            first_xadd = min(float(v["submitted_at"]) for v in job_views(stack.cloud, qpu, ids))
            stats = stack.cloud.stats(qpu)
        finally:
            node.stop()
    finally:
        stack.stop()
    figures = duty_figures(read_stamps(stamp_file), first_xadd)
    figures["duplicates"] = stats["duplicate_deliveries"]
    figures["wrong"] = stats["expect_failures"]
    return figures


def _print(name: str, executor_ms: float, figures: dict[str, float]) -> None:
    print(
        f"{name} {executor_ms:g} ms: duty {figures['duty']:.3f}, gap p50 {figures['gap_p50']:.2f} "
        f"p99 {figures['gap_p99']:.2f} max {figures['gap_max']:.1f} ms, "
        f"first run {figures['first_run_ms']:.1f} ms after XADD",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=300, help="jobs queued at once (default 300)")
    parser.add_argument("--executor-ms", default="20,2", help="run times in ms (default 20,2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"default {','.join(MODES)}")
    parser.add_argument("--procfile", type=Path, default=PROCFILE, help="the Procfile of the procfile mode")
    parser.add_argument("--skip-coda-node", action="store_true", help="measure coda-bridge only")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    times = [float(ms) for ms in args.executor_ms.split(",")]
    modes = args.modes.split(",")

    results: list[tuple[str, float, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="coda-duty-") as tmp:
        for executor_ms in times:
            for mode in modes:
                figures = measure(mode, executor_ms, args.n, Path(tmp), args.procfile)
                _print(f"coda-bridge {mode}", executor_ms, figures)
                results.append((f"coda-bridge {mode}", executor_ms, figures))
            if not args.skip_coda_node:
                figures = measure_coda_node(executor_ms, args.n, Path(tmp))
                _print(f"coda-node {CODA_NODE_VERSION}", executor_ms, figures)
                results.append((f"coda-node {CODA_NODE_VERSION}", executor_ms, figures))

    rows = [
        [
            name,
            f"{executor_ms:g} ms",
            f"{f['duty']:.3f}",
            f"{f['gap_p50']:.2f}",
            f"{f['gap_p99']:.2f}",
            f"{f['gap_max']:.1f}",
            f"{f['first_run_ms']:.1f}",
        ]
        for name, executor_ms, f in results
    ]
    table = markdown_table(
        [
            "runtime",
            "run time",
            "duty cycle",
            "gap p50 ms",
            "gap p99 ms",
            "gap max ms",
            "first run after XADD ms",
        ],
        rows,
    )
    wrong = sum(f["wrong"] for _, _, f in results)
    duplicates = sum(f["duplicates"] for _, _, f in results)
    notes = [
        f"{args.n} jobs XADDed at once per row, after {WARMUP_JOBS} warm-up jobs; the executor awaits",
        "a sleep of the run time and stamps its own start and end (`bench_executors:create_stamp_executor`;",
        "one `write` per run to a file each process keeps open).",
        "Duty cycle = busy time / (last end - first start); a gap is one run's end to the next one's start.",
        f"Wrong results {wrong}, duplicate deliveries {duplicates}.",
    ]
    append_results("Duty cycle (issue 24)", [table], notes, write=not args.no_write)


if __name__ == "__main__":
    main()
