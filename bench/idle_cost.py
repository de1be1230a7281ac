"""Idle cost of a node run by ``coda-bridge start``: CPU over 30 s with nothing to do, and how fast a
job that reaches the idle node starts and is answered.

CPU is utime+stime from /proc/<pid>/stat of every process of the node
(supervisor, wrappers, bridge, the three dramatiq workers, the web app),
with default settings (heartbeat every 30 s, VPN check every 10 s).  Then
single jobs are XADDed after a few seconds of idleness each: XADD to the
``executing`` status (``started_at``, written when the executor actor starts
the job) and XADD to the webhook's arrival.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import time

from benchlib import (
    CLK_TCK,
    NOOP_ENV,
    StartedNode,
    append_results,
    cpu_ticks,
    latency_summary,
    markdown_table,
    noop_circuit,
)

from coda_bridge.devtools.stack import LocalStack


def _iso_to_epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="idle window (default 30 s)")
    parser.add_argument("--settle", type=float, default=10.0, help="idle time before the window")
    parser.add_argument("--jobs", type=int, default=20, help="single jobs sent to the idle node")
    parser.add_argument("--gap", type=float, default=2.0, help="idle seconds before each single job")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    stack = LocalStack(env=NOOP_ENV, web=True)
    stack.start(processes=False)
    node = StartedNode(stack)
    try:
        node.start(token=True)
        time.sleep(args.settle)
        roles = node.roles()
        assert stack.broker_redis.process is not None
        broker_pid = stack.broker_redis.process.pid
        before = {pid: cpu_ticks(pid) for pid in [*roles, broker_pid]}
        began = time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - began
        after = {pid: cpu_ticks(pid) for pid in [*roles, broker_pid]}
        vanished = [pid for pid in roles if pid not in node.roles()]

        cloud = stack.cloud_redis.client()
        start_ms, answer_ms = [], []
        for index in range(args.jobs):
            time.sleep(args.gap)
            job_id = stack.cloud.submit(
                stack.qpu_id, noop_circuit(), 100, expect="noop", job_id=f"idle-{index}"
            )
            stack.cloud.wait_for_result(job_id, timeout_sec=30)
            view = stack.cloud.job(job_id)
            started_at = cloud.hget(f"qpu:job:{job_id}:status", "started_at")
            answer_ms.append(float(view["latency_ms"]))
            if started_at:
                start_ms.append((_iso_to_epoch(str(started_at)) - float(view["submitted_at"])) * 1000)
    finally:
        if node.process is not None:
            node.stop()
        stack.stop()

    used: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for pid, name in roles.items():
        used[name] += (after[pid] - before[pid]) / CLK_TCK
        counts[name] += 1
    rows = [
        [name, counts[name], f"{seconds:.2f}", f"{100 * seconds / wall:.2f} %"]
        for name, seconds in sorted(used.items(), key=lambda item: -item[1])
    ]
    node_total = sum(used.values())
    rows.append(["all node processes", len(roles), f"{node_total:.2f}", f"{100 * node_total / wall:.2f} %"])
    broker = (after[broker_pid] - before[broker_pid]) / CLK_TCK
    rows.append(["(broker Redis, for reference)", 1, f"{broker:.2f}", f"{100 * broker / wall:.2f} %"])
    cpu_table = markdown_table(["process", "count", f"CPU s in {wall:.0f} s", "of one core"], rows)
    start = latency_summary(start_ms)
    answer = latency_summary(answer_ms)
    latency_table = markdown_table(
        ["single job to an idle node", "p50, ms", "max, ms"],
        [
            ["XADD to executing (started_at)", f"{start['p50']:.1f}", f"{start['max']:.1f}"],
            ["XADD to webhook", f"{answer['p50']:.1f}", f"{answer['max']:.1f}"],
        ],
    )
    pct = 100 * node_total / wall
    goals = markdown_table(
        ["goal (issue 4/7)", "target", "measured", "met"],
        [
            ["idle CPU, all node processes", "< 2 % of a core", f"{pct:.2f} %", "yes" if pct < 2 else "no"],
            ["a job reaching an idle node starts", "a few ms (p50 <= 5 ms)",
             f"p50 {start['p50']:.1f} ms, max {start['max']:.1f} ms", "yes" if start["p50"] <= 5 else "no"],
        ],
    )  # fmt: skip
    notes = [
        f"Default settings (heartbeat 30 s, VPN check 10 s, stream block 2 s); {len(roles)} processes;",
        f"idle window {wall:.1f} s after {args.settle:g} s of settling; single jobs {args.gap:g} s apart.",
        "started_at has millisecond resolution.",
    ]
    if vanished:
        notes.append(f"{len(vanished)} process(es) ended during the window: {vanished}")
    append_results("Idle cost and idle-job start", [cpu_table, latency_table, goals], notes,
                   write=not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
