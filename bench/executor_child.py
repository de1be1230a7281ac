"""What running the executor in a child process costs per run: the simulator's Bell circuit, no node.

The same call three ways: in the worker's own process (before issue 21),
through a kept child (every run), and through a freshly forked child (the
run after a crash or a kill).  Median and p99 of ``-n`` calls each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchlib import append_results, markdown_table

from coda_bridge.circuits.ir import parse_ir
from coda_bridge.executors.base import call_batch_run, call_run, cancel
from coda_bridge.executors.isolation import ExecutorProcesses
from coda_bridge.executors.simulator import create_executor
from coda_bridge.settings import load_settings

SHOTS = 100


def _bell() -> Any:
    return parse_ir(
        {
            "version": "1.0",
            "target": "cz",
            "num_qubits": 2,
            "gates": [
                {"gate": "ry", "qubits": [0], "params": [1.5707963]},
                {"gate": "cz", "qubits": [0, 1], "params": []},
            ],
            "measurements": [0, 1],
            "metadata": {"source_hash": "bench", "compiled_at": "2026-01-01T00:00:00Z"},
        }
    )


def _timed(call: Callable[[], None], n: int) -> tuple[float, float]:
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return statistics.median(seconds) * 1000, seconds[min(int(n * 0.99), n - 1)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=500, help="calls per way (fresh children: a fifth)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    executor = create_executor(load_settings())
    circuit = _bell()
    children = ExecutorProcesses(lambda: executor, {"run": call_run, "batch_run": call_batch_run}, cancel, 1)

    def kept() -> None:
        child = children.take()
        child.call("run", circuit, SHOTS)
        answer = child.reply(10)
        assert answer is not None and answer[0] == "ok", answer
        children.give_back(child)

    def fresh() -> None:
        child = children.take()
        child.call("run", circuit, SHOTS)
        assert child.reply(10) is not None
        children.discard(child)

    kept()
    rows = [
        ["in the worker's process", *_timed(lambda: call_run(executor, circuit, SHOTS), args.n)],
        ["in a kept child", *_timed(kept, args.n)],
        ["in a freshly forked child", *_timed(fresh, max(args.n // 5, 1))],
    ]
    table = markdown_table(
        ["one run of a Bell circuit", "median, ms", "p99, ms"],
        [[name, f"{median:.3f}", f"{p99:.3f}"] for name, median, p99 in rows],
    )
    append_results(
        "Executor child process: cost per run (issue 21)",
        [table],
        [
            "The built-in simulator, 2 qubits, 100 shots, called directly (no node, no Redis). A kept",
            "child serves every run; a fresh fork happens only after a crash or a kill.",
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
