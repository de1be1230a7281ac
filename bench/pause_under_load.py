"""Pause under load (issue 25's must-show): 200 jobs queued, ``coda-bridge pause --for 20s`` while they run.

Two jobs workers on one broker (the second stands in for another host),
heartbeats every second.  Once the first jobs have run, the operator's
``pause`` command is run; the script then waits for every result and checks,
from the executor's own start/end stamps and the simulator's clocks:

- the runs that had started when the pause began all ended (none was cut);
- no run started during the pause (beyond a run that passed its check an
  instant before it: ``--grace``), on either worker;
- heartbeats went on, on time: the largest gap inside the pause;
- after the pause every job completed, each delivered once.

It prints the figures (and the timeline of a job the pause held, as
``coda-bridge job`` shows it), appends them to bench/RESULTS.md unless
``--no-write``, and exits 1 when a check fails.  It takes about a minute;
the same checks on 40 jobs and a 5 s pause run in the test suite
(tests/control/test_pause_e2e.py).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO_ROOT, append_results, fmt, markdown_table, python_path, start_stack

from coda_bridge.control.pause_book import PauseBook
from coda_bridge.devtools.stack import wait_until

#: The pause tests' executor: it stamps each run's start and end with its time and pid.
SUPPORT = REPO_ROOT / "tests" / "support"
HEARTBEAT_SEC = 1.0


def _stamps(path: Path, event: str) -> list[tuple[float, int, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    found = []
    for line in lines:
        kind, at, pid, tag = line.split(" ", 3)
        if kind == event:
            found.append((float(at), int(pid), tag))
    return found


def _circuit(job_sec: float) -> dict[str, Any]:
    return {
        "version": "1.0",
        "target": "cz",
        "num_qubits": 2,
        "gates": [{"gate": "cz", "qubits": [0, 1], "params": []}],
        "measurements": [0, 1],
        "metadata": {"source_hash": f"sleep:{job_sec}:load", "compiled_at": "2026-01-01T00:00:00Z"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200, help="jobs queued (default 200)")
    parser.add_argument("--pause", default="20s", help="the pause's --for (default 20s)")
    parser.add_argument("--job-sec", type=float, default=0.1, help="each run's length (default 0.1 s)")
    parser.add_argument("--grace", type=float, default=1.0, help="a run may start this long into it (1 s)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="coda-pause-bench-"))
    stamps = workdir / "stamps.log"
    stack = start_stack(
        {
            "CODA_EXECUTOR_FACTORY": "pause_test_executor:create_executor",
            "PAUSE_TEST_EXECUTOR_LOG": str(stamps),
            "PYTHONPATH": python_path(SUPPORT),
            "CODA_HEARTBEAT_INTERVAL_SEC": str(HEARTBEAT_SEC),
            "CODA_VPN_CHECK_INTERVAL_SEC": "1",
            "CODA_STREAM_BLOCK_MS": "500",
            "CODA_DEVICE_POLL_INTERVAL_SEC": "0.5",
        },
        workdir=workdir,
    )
    try:
        stack.start_process("jobs#2")
        stack.cloud.wait_for_heartbeats(stack.qpu_id, count=2, timeout_sec=60)

        began = time.time()
        ids = stack.cloud.submit_bulk(stack.qpu_id, args.n, _circuit(args.job_sec), 10, job_id_prefix="load-")
        wait_until(lambda: len(_stamps(stamps, "end")) >= 10, 120, "the first jobs to run")
        done = stack.command("pause", "--for", args.pause, "--note", "bench: pause under load")
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        pause = PauseBook(stack.broker_redis.client(), stack.qpu_id).current()
        assert pause is not None
        results = stack.cloud.wait_for_results(ids, timeout_sec=600)
        finished = time.time()

        starts = _stamps(stamps, "start")
        ends = _stamps(stamps, "end")
        before = [at for at, _, _ in starts if at < pause.since]
        running = len(before) - len([at for at, _, _ in ends if at < pause.since])
        during = [at for at, _, _ in starts if pause.since + args.grace <= at < pause.until]
        after = sorted(at for at, _, _ in starts if at >= pause.until)
        beats = [b["received_at"] for b in stack.cloud.heartbeats(stack.qpu_id, accepted=True)]
        window = [pause.since, *(t for t in beats if pause.since <= t <= pause.until), pause.until]
        gap = max(b - a for a, b in itertools.pairwise(window))
        completed = sum(1 for r in results.values() if r["status"] == "completed")
        duplicates = stack.cloud.stats(stack.qpu_id)["duplicate_deliveries"]
        pids = {pid for _, pid, _ in starts}
        checks = {
            "running jobs finished": len(starts) == len(ends),
            "no job started during the pause": not during,
            "heartbeats on time (gap < 2.5 intervals)": gap < 2.5 * HEARTBEAT_SEC,
            "every job completed after it": completed == args.n and bool(after),
            "each delivered once": duplicates == 0,
            "both workers ran jobs": len(pids) == 2,
        }
        rows: list[list[Any]] = [
            ["jobs queued / completed", f"{args.n} / {completed}"],
            ["pause (s)", fmt(pause.until - pause.since)],
            ["runs started before it / running when it began", f"{len(before)} / {running}"],
            ["runs started during it (after the grace)", len(during)],
            ["first start after it (s after its end)", fmt(after[0] - pause.until, 2) if after else "-"],
            ["heartbeats inside it / largest gap (s)", f"{len(window) - 2} / {fmt(gap, 2)}"],
            ["duplicate deliveries", duplicates],
            ["jobs worker processes that ran jobs", len(pids)],
            ["submit to last result (s)", fmt(finished - began)],
        ]
        table = markdown_table(["figure", "value"], rows)
        notes = [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()]
        append_results(
            f"Pause under load: {args.n} jobs, pause --for {args.pause}",
            [table],
            notes,
            write=not args.no_write,
        )
        shown = stack.command("job", ids[-1])  # the last one queued: it waited out the pause
        print(f"The last job queued, as `coda-bridge job {ids[-1]}` shows it:")
        print(shown.stdout or shown.stderr)
        return 0 if all(checks.values()) else 1
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
