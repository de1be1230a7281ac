"""Footprint of a node run by ``coda-bridge start``: memory of every process idle and under load, and
the seconds from the ``start`` command to the first ``/ready`` 200.

Memory is VmRSS from /proc/<pid>/status (each process on its own; a
process's children are listed on their own rows, and the "with children"
column adds them up) and PSS from /proc/<pid>/smaps_rollup (shared pages
split between the processes that share them, so the PSS column adds up to
what the node really takes).  "Under load" is the peak while a burst of
no-op jobs runs.  Start-to-ready is timed for the first start (provisioning
with a token) and for later starts (reconnect with the persisted key).
"""

from __future__ import annotations

import argparse
import collections
import time

from benchlib import (
    StartedNode,
    append_results,
    family,
    markdown_table,
    noop_circuit,
    pss_kib,
    rss_kib,
    wait_delivered,
)

from coda_bridge.dev.stack import LocalStack

#: Order of the rows.
ROLE_ORDER = [
    "start (supervisor)",
    "honcho fork (one per process)",
    "respawn wrapper (one per process)",
    "bridge",
    "jobs (master)",
    "jobs (worker process)",
    "results (master)",
    "results (worker process)",
    "control (master)",
    "control (worker process)",
    "web (gunicorn master)",
    "web (gunicorn worker)",
]


def _snapshot(node: StartedNode) -> dict[int, tuple[str, int, int]]:
    return {pid: (name, rss_kib(pid), pss_kib(pid)) for pid, name in node.roles().items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=2000, help="no-op jobs of the load phase (default 2000)")
    parser.add_argument("--restarts", type=int, default=2, help="timed restarts after the first start")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before the idle reading")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    stack = LocalStack(web=True)
    stack.start(processes=False)
    node = StartedNode(stack)
    ready_times: list[tuple[str, float]] = []
    stop_times: list[float] = []
    try:
        ready_times.append(("first start (provision with token)", node.start(token=True)))
        time.sleep(args.settle)
        idle = _snapshot(node)
        peak: dict[int, int] = collections.defaultdict(int)
        names = dict(node.roles())
        ids = stack.cloud.submit_bulk(stack.qpu_id, args.n, noop_circuit(), 100, expect="noop")
        deadline = time.monotonic() + 300
        while stack.cloud.stats(stack.qpu_id)["delivered"] < len(ids):
            for pid in family(node.pid):
                names.setdefault(pid, node.roles().get(pid, "?"))
                peak[pid] = max(peak[pid], rss_kib(pid))
            if time.monotonic() > deadline:
                raise TimeoutError("load phase did not finish in 300 s")
            time.sleep(0.2)
        stats = wait_delivered(stack.cloud, stack.qpu_id, len(ids), timeout_sec=10)
        stop_times.append(node.stop())
        for index in range(args.restarts):
            ready_times.append((f"restart {index + 1} (reconnect)", node.start(token=False)))
            time.sleep(1.0)
            stop_times.append(node.stop())
    finally:
        if node.process is not None:
            node.stop()
        stack.stop()

    by_role: dict[str, list[int]] = collections.defaultdict(list)
    for pid, (name, _, _) in idle.items():
        by_role[name].append(pid)
    rows = []
    total_rss = total_pss = total_peak = 0
    for name in sorted(by_role, key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else 99):
        pids = by_role[name]
        rss = [idle[p][1] for p in pids]
        pss = [idle[p][2] for p in pids]
        load = [peak.get(p, 0) for p in pids]
        total_rss += sum(rss)
        total_pss += sum(pss)
        total_peak += sum(load)
        rows.append([
            name, len(pids), f"{max(rss) / 1024:.1f}", f"{sum(pss) / 1024:.1f}", f"{max(load) / 1024:.1f}",
        ])  # fmt: skip
    rows.append(["all processes", len(idle), f"{total_rss / 1024:.1f} (sum)", f"{total_pss / 1024:.1f}",
                 f"{total_peak / 1024:.1f} (sum)"])  # fmt: skip
    mem_table = markdown_table(
        [
            "process",
            "count",
            "RSS idle, MiB (each)",
            "PSS idle, MiB (all of them)",
            "RSS peak under load, MiB (each)",
        ],
        rows,
    )
    ready_table = markdown_table(
        ["start", "seconds to first /ready 200"], [[label, f"{sec:.2f}"] for label, sec in ready_times]
    )
    bridge_rss = max(idle[p][1] for p in by_role["bridge"]) / 1024
    bridge_peak = max(peak.get(p, 0) for p in by_role["bridge"]) / 1024
    worst = max(bridge_rss, bridge_peak)
    goals = markdown_table(
        ["goal (issue 7)", "target", "measured", "met"],
        [["bridge process resident", "< 80 MB", f"{worst:.1f} MiB ({worst * 1.048576:.1f} MB) at peak",
          "yes" if worst * 1.048576 < 80 else "no"]],
    )  # fmt: skip
    notes = [
        f"Load: {args.n} no-op jobs in one burst ({stats['delivered']} delivered, peak sampled every 0.2 s).",
        f"Stop (SIGTERM, drain) took {', '.join(f'{s:.1f}' for s in stop_times)} s.",
        "`/ready` needs the VPN check (not required here), the cloud Redis and a recent stream read.",
    ]
    append_results("Footprint: memory and start-to-ready", [mem_table, ready_table, goals], notes,
                   write=not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
