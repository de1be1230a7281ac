"""Where the time goes: CPU per job of every process during a no-op burst, and optional py-spy profiles.

Reads utime+stime from /proc for each node process (with its children), the
simulator, both Redis servers and this script, before and after a burst of
N no-op jobs, and prints CPU milliseconds per job.  With ``--py-spy`` (needs
the ``py-spy`` binary; ``bench/README.md`` says where to get it) it also
samples the bridge and the workers during the burst and prints the hottest
functions of each (own time and total time).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import (
    BENCH_DIR,
    CLK_TCK,
    append_results,
    cpu_split,
    family,
    job_views,
    markdown_table,
    noop_circuit,
    start_stack,
    throughput,
    wait_delivered,
    wait_idle_workers,
)

from coda_bridge.devtools.stack import LocalStack


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    local = BENCH_DIR / ".venv-tools" / "bin" / "py-spy"
    return str(local) if local.exists() else None


def _targets(stack: LocalStack) -> dict[str, list[int]]:
    assert stack.devcloud is not None and stack.cloud_redis.process and stack.broker_redis.process
    found = {name: family(child.pid) for name, child in stack.children.items()}
    found["devcloud (simulator)"] = family(stack.devcloud.pid)
    found["cloud redis"] = [stack.cloud_redis.process.pid]
    found["broker redis"] = [stack.broker_redis.process.pid]
    found["bench script"] = [os.getpid()]
    return found


def _ticks(targets: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    found = {}
    for name, pids in targets.items():
        splits = [cpu_split(p) for p in pids]
        found[name] = (sum(u for u, _ in splits), sum(s for _, s in splits))
    return found


def _summarise_raw(path: Path, top: int) -> list[tuple[str, float, float]]:
    """(function, own %, total %) of the hottest functions of a py-spy raw (collapsed stack) file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return [(frame, 100 * n / samples, 100 * total[frame] / samples) for frame, n in own.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--py-spy", action="store_true", help="also sample the node's processes with py-spy")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--wall", action="store_true", help="sample wall time of every thread (--idle) instead of GIL holders"
    )
    parser.add_argument("--write", action="store_true", help="append the CPU table to RESULTS.md")
    args = parser.parse_args()

    stack = start_stack()
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        wait_idle_workers(2.0)
        warm = stack.cloud.submit_bulk(
            stack.qpu_id, 20, noop_circuit(), 100, expect="noop", job_id_prefix="w-"
        )
        stack.cloud.wait_for_results(warm, timeout_sec=60)
        time.sleep(1.0)
        targets = _targets(stack)
        spy = _py_spy() if args.py_spy else None
        if args.py_spy and spy is None:
            raise SystemExit("py-spy not found (see bench/README.md)")
        mode = ["--idle", "--threads"] if args.wall else ["--gil"]
        if spy:
            spy_dir = Path(tempfile.mkdtemp(prefix="coda-bench-spy-"))  # kept: the raw samples are printed
            for name in ("bridge", "jobs", "results", "devcloud (simulator)"):
                for pid in targets[name]:
                    out = spy_dir / f"spy-{name.split()[0]}-{pid}.txt"
                    proc = subprocess.Popen(
                        [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                         "--output", str(out), "--nonblocking", *mode],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    spies.append((f"{name} pid {pid}", proc, out))
            time.sleep(1.0)
        before = _ticks(targets)
        started = time.monotonic()
        ids = stack.cloud.submit_bulk(stack.qpu_id, args.n, noop_circuit(), 100, expect="noop")
        wait_delivered(stack.cloud, stack.qpu_id, 20 + args.n, timeout_sec=600, poll_sec=1.0)
        wall = time.monotonic() - started
        after = _ticks(targets)
        rate, seconds = throughput(job_views(stack.cloud, stack.qpu_id, ids))
        for _, proc, _ in spies:
            proc.send_signal(2)
        for _, proc, _ in spies:
            proc.wait(30)
    finally:
        stack.stop()

    rows = []
    total_ms = 0.0
    total_user = 0.0
    for name in before:
        user = (after[name][0] - before[name][0]) / CLK_TCK
        system = (after[name][1] - before[name][1]) / CLK_TCK
        used = user + system
        per_job = used * 1000 / args.n
        total_ms += per_job
        total_user += user * 1000 / args.n
        user_ms, system_ms = user * 1000 / args.n, system * 1000 / args.n
        rows.append(
            [
                name,
                f"{used:.2f}",
                f"{per_job:.2f}",
                f"{user_ms:.2f}",
                f"{system_ms:.2f}",
                f"{100 * used / wall:.0f} %",
            ]
        )
    rows.append(["all", "", f"{total_ms:.2f}", f"{total_user:.2f}", f"{total_ms - total_user:.2f}", ""])
    table = markdown_table(
        ["process", "CPU s", "CPU ms per job", "user ms per job", "system ms per job", "of one core"], rows
    )
    notes = [
        f"{args.n} no-op jobs in one burst: {rate:.0f} jobs/s ({seconds:.2f} s first XADD to last webhook);",
        f"CPU measured over {wall:.1f} s of wall time (includes the polling of the simulator's stats).",
    ]
    append_results("CPU per job, no-op burst", [table], notes, write=args.write)
    for label, _, out in spies:
        if not out.exists():
            print(f"(no py-spy output for {label})")
            continue
        print(f"\n### py-spy: {label}\n")
        hot = _summarise_raw(out, args.top)
        print(
            markdown_table(
                ["function (file:line)", "own %", "total %"],
                [[f, round(o, 1), round(t, 1)] for f, o, t in hot],
            )
        )
        print(f"(raw samples in {out})")


if __name__ == "__main__":
    main()
