"""Broker memory over a long run: N no-op jobs through a whole node, the broker's memory before and after.

The node keeps, per delivered job, its record and delivered mark for
``record_retention_sec`` (a duplicate message of the job finds them and is
not run again).  This script measures what that costs the broker Redis:
``used_memory`` once the node is idle before the run, after all N results
are delivered, and (with ``--retention-sec`` short) again once the
retention has passed, beside the count of the node's keys.
``python bench/broker_soak.py --help`` for the sizes.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis
from benchlib import (
    append_results,
    markdown_table,
    noop_circuit,
    start_stack,
    wait_delivered,
    wait_idle_workers,
)

from coda_bridge.state.broker_keys import node_pattern

SHOTS = 10
#: Jobs XADDed per round: the bridge paces itself (max_local_queue), the simulator's lists stay small.
CHUNK = 2000
#: How often the retention wait looks at the broker's key count.
POLL_SEC = 1.0


def _memory(client: redis.Redis, qpu_id: str) -> dict[str, Any]:
    info: Any = client.info("memory")
    keys = sum(1 for _ in client.scan_iter(match=node_pattern(qpu_id), count=1000))
    return {"used_mib": info["used_memory"] / 2**20, "keys": keys, "total_keys": client.dbsize()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=20_000, help="jobs (default 20000)")
    parser.add_argument(
        "--retention-sec",
        type=float,
        default=None,
        help="CODA_RECORD_RETENTION_SEC for the node; when set, memory is measured again once it passed",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    env = {} if args.retention_sec is None else {"CODA_RECORD_RETENTION_SEC": str(args.retention_sec)}
    stack = start_stack(env)
    rows: list[list[Any]] = []
    try:
        client = redis.Redis.from_url(stack.broker_redis.url)
        circuit = noop_circuit()
        warm = stack.cloud.submit_bulk(stack.qpu_id, 20, circuit, SHOTS, job_id_prefix="warm-")
        stack.cloud.wait_for_results(warm, timeout_sec=120)
        wait_idle_workers(2.0)
        before = _memory(client, stack.qpu_id)
        rows.append(["idle, after 20 warm-up jobs", before["used_mib"], before["keys"], before["total_keys"]])
        print(f"before: {before}", flush=True)

        started = time.monotonic()
        sent = 20
        while sent < 20 + args.n:
            count = min(CHUNK, 20 + args.n - sent)
            stack.cloud.submit_bulk(stack.qpu_id, count, circuit, SHOTS, job_id_prefix=f"soak-{sent}-")
            sent += count
            wait_delivered(stack.cloud, stack.qpu_id, sent, timeout_sec=max(120.0, count * 0.2))
        took = time.monotonic() - started
        wait_idle_workers(2.0)
        after = _memory(client, stack.qpu_id)
        rows.append([f"after {args.n} jobs", after["used_mib"], after["keys"], after["total_keys"]])
        print(f"after: {after} ({took:.0f} s)", flush=True)
        per_job = (after["used_mib"] - before["used_mib"]) * 2**20 / args.n

        if args.retention_sec is not None:
            deadline = time.monotonic() + args.retention_sec + 60
            while time.monotonic() < deadline and _memory(client, stack.qpu_id)["keys"] > before["keys"] + 50:
                time.sleep(POLL_SEC)
            expired = _memory(client, stack.qpu_id)
            rows.append(
                [
                    f"{args.retention_sec:g} s after (retention)",
                    expired["used_mib"],
                    expired["keys"],
                    expired["total_keys"],
                ]
            )
            print(f"after retention: {expired}", flush=True)
        stats = stack.cloud.stats(stack.qpu_id)
    finally:
        stack.stop()

    retention = "7 days (default)" if args.retention_sec is None else f"{args.retention_sec:g} s"
    table = markdown_table(["broker Redis", "used_memory MiB", "node keys", "all keys"], rows)
    append_results(
        f"Broker memory over {args.n} jobs (retention {retention})",
        [table],
        [
            f"- {per_job:.0f} B of broker memory per delivered job while its record is kept; "
            f"{args.n} jobs in {took:.0f} s; duplicates {stats['duplicate_deliveries']}, "
            f"undelivered {stats['undelivered']}.",
            "- What the node keeps per job for the retention: its record and delivered mark, "
            "its timeline (`coda-bridge job`), its entry in the entry index and its histogram samples "
            "(see docs/operations.md, "
            "'Sizing the broker').",
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
