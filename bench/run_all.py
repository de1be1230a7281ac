"""Run every benchmark once, in order, each appending its section to bench/RESULTS.md.

    python bench/run_all.py              # everything (about 16 minutes on 2 cores)
    python bench/run_all.py --no-write   # print only
    python bench/run_all.py throughput faults   # a selection

Each script is its own process, so each section records its own command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchlib import BENCH_DIR

SCRIPTS = ["throughput", "duty_cycle", "scaling", "heartbeat_load", "footprint", "idle_cost", "faults"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"scripts to run: {', '.join(SCRIPTS)} (default all)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in SCRIPTS]
    if unknown:
        parser.error(f"unknown script(s): {', '.join(unknown)}")
    failed = []
    for name in args.names or SCRIPTS:
        command = [sys.executable, str(BENCH_DIR / f"{name}.py")]
        if args.no_write:
            command.append("--no-write")
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.run(command, cwd=BENCH_DIR, check=False).returncode
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
