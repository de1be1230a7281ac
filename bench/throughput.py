"""Throughput and latency with the no-op executor: coda-bridge against the first runtime, coda-node 0.1.1.

Burst: N jobs XADDed at once (``submit_bulk``); jobs/s from the first XADD to
the last webhook's arrival, and the XADD-to-webhook latency percentiles, all
from the simulator's own clocks.  Idle: one job at a time (submit, wait for
its result, pause, next) for the latency of a job reaching an idle node.

Both runtimes run on this machine against the same simulator process and the
same cloud Redis, one after the other (never at the same time), each with its
own QPU.  coda-bridge runs as ``coda-bridge start`` (``--mode start``, the
default) or as the Procfile's lines (``--mode procfile``).
``python bench/throughput.py --help`` for the sizes.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from benchlib import (
    CODA_NODE_VERSION,
    PROCFILE,
    CodaNodeProcess,
    append_results,
    job_views,
    latency_summary,
    markdown_table,
    noop_circuit,
    ratio,
    start_stack,
    throughput,
    wait_delivered,
    wait_idle_workers,
)

from coda_bridge.devtools.devcloud.admin_client import DevCloudClient
from coda_bridge.devtools.localredis import free_port

SHOTS = 100
WARMUP_JOBS = 20
#: Pause between two jobs of the idle run, so the node is back in its idle wait (seeded jitter).
IDLE_GAP_SEC = (0.05, 0.15)
#: Poll interval of the idle run while it waits for one result.
RESULT_POLL_SEC = 0.01


def _wait_result(cloud: DevCloudClient, job_id: str, timeout_sec: float) -> None:
    deadline = time.monotonic() + timeout_sec
    while cloud.job(job_id)["result"] is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result for {job_id} after {timeout_sec:g} s")
        time.sleep(RESULT_POLL_SEC)


def measure(cloud: DevCloudClient, qpu_id: str, n: int, idle_n: int, seed: int) -> dict[str, Any]:
    """Warm-up, then the burst of ``n`` jobs, then ``idle_n`` jobs one at a time."""
    circuit = noop_circuit()
    warm = cloud.submit_bulk(
        qpu_id, WARMUP_JOBS, circuit, SHOTS, expect="noop", job_id_prefix=f"warm-{qpu_id}-"
    )
    cloud.wait_for_results(warm, timeout_sec=120)

    burst = cloud.submit_bulk(qpu_id, n, circuit, SHOTS, expect="noop", job_id_prefix=f"burst-{qpu_id}-")
    stats = wait_delivered(cloud, qpu_id, WARMUP_JOBS + n, timeout_sec=max(120.0, n * 0.2))
    views = job_views(cloud, qpu_id, burst)
    jobs_per_sec, seconds = throughput(views)
    burst_latency = latency_summary(float(v["latency_ms"]) for v in views)

    rng = random.Random(seed)
    idle_ids = []
    for index in range(idle_n):
        time.sleep(rng.uniform(*IDLE_GAP_SEC))
        job_id = cloud.submit(qpu_id, circuit, SHOTS, expect="noop", job_id=f"idle-{qpu_id}-{index}")
        _wait_result(cloud, job_id, timeout_sec=30)
        idle_ids.append(job_id)
    idle_latency = latency_summary(float(v["latency_ms"]) for v in job_views(cloud, qpu_id, idle_ids))

    final = cloud.stats(qpu_id)
    return {
        "n": n,
        "idle_n": idle_n,
        "jobs_per_sec": jobs_per_sec,
        "seconds": seconds,
        "burst": burst_latency,
        "idle": idle_latency,
        "stats_p50_burst": stats["latency_ms"].get("p50"),
        "duplicates": final["duplicate_deliveries"],
        "mismatches": final["content_mismatches"],
        "expect_failures": final["expect_failures"],
        "undelivered": final["undelivered"],
    }


def _print_run(name: str, result: dict[str, Any]) -> None:
    burst, idle = result["burst"], result["idle"]
    print(
        f"{name}: {result['jobs_per_sec']:.1f} jobs/s over {result['seconds']:.2f} s; "
        f"burst p50 {burst['p50']:.1f} ms p99 {burst['p99']:.1f} ms; "
        f"idle p50 {idle['p50']:.1f} ms p99 {idle['p99']:.1f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=2000, help="burst size for coda-bridge (default 2000)")
    parser.add_argument("--idle-n", type=int, default=200, help="one-at-a-time jobs (default 200)")
    parser.add_argument("--coda-node-n", type=int, default=None, help="burst size for coda-node (default -n)")
    parser.add_argument(
        "--coda-node-idle-n",
        type=int,
        default=None,
        help="one-at-a-time jobs for coda-node (default --idle-n)",
    )
    parser.add_argument("--skip-coda-node", action="store_true", help="measure coda-bridge only")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mode",
        choices=["start", "procfile"],
        default="start",
        help="how coda-bridge runs: `coda-bridge start` (default) or the Procfile's lines",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    node_n = args.coda_node_n or args.n
    node_idle_n = args.coda_node_idle_n or args.idle_n

    stack = start_stack(mode=args.mode, procfile=PROCFILE if args.mode == "procfile" else None)
    try:
        wait_idle_workers(2.0)
        print(f"coda-bridge: {args.n} jobs burst, {args.idle_n} one at a time...", flush=True)
        bridge = measure(stack.cloud, stack.qpu_id, args.n, args.idle_n, args.seed)
        _print_run("coda-bridge", bridge)
        stack.stop_node()

        peer: dict[str, Any] | None = None
        if not args.skip_coda_node:
            peer_qpu = "qpu-coda-node"
            stack.cloud.create_qpu(
                peer_qpu, display_name="coda-node peer", native_gate_set="cz", num_qubits=5,
                connection_mode="https", redis_url=stack.cloud_redis.url,
            )  # fmt: skip
            node = CodaNodeProcess(stack, peer_qpu, port=free_port())
            node.start()
            try:
                time.sleep(2.0)
                print(f"coda-node {CODA_NODE_VERSION}: {node_n} jobs burst, {node_idle_n} one at a time...")
                peer = measure(stack.cloud, peer_qpu, node_n, node_idle_n, args.seed)
                _print_run("coda-node", peer)
            finally:
                node.stop()
    finally:
        stack.stop()

    def row(label: str, key: str, sub: str | None = None, digits: int = 1) -> list[Any]:
        ours = bridge[key][sub] if sub else bridge[key]
        theirs = (peer[key][sub] if sub else peer[key]) if peer else None
        return [
            label,
            round(float(ours), digits),
            round(float(theirs), digits) if theirs is not None else "-",
            f"{ratio(ours, theirs):.3g}" if peer else "-",
        ]

    rows = [
        ["burst jobs (N)", bridge["n"], peer["n"] if peer else "-", ""],
        row("throughput, jobs/s", "jobs_per_sec"),
        row("burst latency p50, ms", "burst", "p50"),
        row("burst latency p90, ms", "burst", "p90"),
        row("burst latency p99, ms", "burst", "p99"),
        row("burst latency max, ms", "burst", "max"),
        ["idle jobs (one at a time)", bridge["idle_n"], peer["idle_n"] if peer else "-", ""],
        row("idle latency p50, ms", "idle", "p50"),
        row("idle latency p90, ms", "idle", "p90"),
        row("idle latency p99, ms", "idle", "p99"),
        row("idle latency max, ms", "idle", "max"),
        ["duplicate deliveries", bridge["duplicates"], peer["duplicates"] if peer else "-", ""],
        [
            "wrong results (expect failures)",
            bridge["expect_failures"],
            peer["expect_failures"] if peer else "-",
            "",
        ],
        ["undelivered", bridge["undelivered"], peer["undelivered"] if peer else "-", ""],
    ]
    table = markdown_table(
        ["figure", f"coda-bridge ({args.mode})", f"coda-node {CODA_NODE_VERSION}", "ratio bridge/node"], rows
    )
    speedup = ratio(bridge["jobs_per_sec"], peer["jobs_per_sec"]) if peer else float("nan")
    goals = markdown_table(
        ["goal (issues 7 and 24)", "target", "measured", "met"],
        [
            ["throughput vs coda-node", ">= 25x", f"{speedup:.1f}x", "yes" if speedup >= 25 else "no"],
            ["idle latency p50", "<= 10 ms", f"{bridge['idle']['p50']:.1f} ms",
             "yes" if bridge["idle"]["p50"] <= 10 else "no"],
            ["idle latency p99", "<= 30 ms", f"{bridge['idle']['p99']:.1f} ms",
             "yes" if bridge["idle"]["p99"] <= 30 else "no"],
        ],
    )  # fmt: skip
    notes = [
        "Latency is XADD (simulator clock, just before the pipeline of its chunk) to the first accepted",
        "webhook (simulator clock). Throughput is N divided by first XADD to last first-webhook. A ratio",
        "above 1 is better for throughput; below 1 is better for latency. Both runtimes use the no-op",
        "executor, default settings (log level INFO), the same simulator process and cloud Redis, one",
        f"after the other, each after {WARMUP_JOBS} warm-up jobs. coda-bridge ran as "
        + ("`coda-bridge start`." if args.mode == "start" else "the Procfile's lines."),
    ]
    if peer and (node_n != args.n or node_idle_n != args.idle_n):
        notes.append(f"coda-node ran a smaller N ({node_n} burst, {node_idle_n} idle): it is much slower.")
    append_results("Throughput and latency (no-op executor)", [table, goals], notes, write=not args.no_write)


if __name__ == "__main__":
    main()
