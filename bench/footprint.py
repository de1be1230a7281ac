"""Footprint of a node: ``coda-bridge start``, ``coda-bridge start --one-process`` and the first runtime
(``coda-node``), one after the other on the same simulator, and the ratios between them.

For each runtime: its processes (the whole tree under the command), PSS summed over the tree from
/proc/<pid>/smaps_rollup (shared pages split between the processes that share them, so the sum is
what the node really takes) and RSS per process, idle; the seconds from the command to the first
``/ready`` 200 (first start with a token, then restarts that reconnect); the seconds from SIGTERM to
the exit of an idle node.  The default mode's rows are per process role; ``-n`` adds the peak RSS of
every process under a burst of no-op jobs to the default mode.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    NOOP_ENV,
    CodaNodeProcess,
    append_results,
    cmdline,
    family,
    markdown_table,
    noop_circuit,
    parent_pid,
    pss_kib,
    rss_kib,
    wait_delivered,
)

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import LocalStack

#: Order of the rows of the default mode.
ROLE_ORDER = [
    "start (supervisor)",
    "bridge",
    "jobs",
    "results",
    "control",
    "web (gunicorn master)",
    "web (gunicorn worker)",
]
#: How often the start-to-ready loop asks /ready.
READY_POLL_SEC = 0.01
#: How long one runtime may take to answer /ready 200.
READY_TIMEOUT_SEC = 90.0
#: How long a stop may take before the bench kills the tree.
STOP_TIMEOUT_SEC = 60.0
#: How often the load phase samples RSS.
PEAK_SAMPLE_SEC = 0.2


def role(pid: int, root: int) -> str:
    """What one process of a ``coda-bridge start`` tree is, from its command line."""
    line = cmdline(pid)
    if pid == root:
        return "start (supervisor)"
    if "coda_bridge.ops.runners bridge" in line or line.endswith("-m coda_bridge bridge"):
        return "bridge"
    if "coda_bridge.ops.runners worker" in line or ("dramatiq" in line and "--queues" in line):
        return line.split("--queues", 1)[1].split()[0]
    if "gunicorn" in line or "coda_bridge web" in line:
        under_master = "gunicorn" in cmdline(parent_pid(pid))
        return "web (gunicorn worker)" if under_master else "web (gunicorn master)"
    return line[:60] or f"pid {pid}"


class Runtime:
    """One runtime run as a user would: start it, time its first /ready 200, read its tree, stop it."""

    def __init__(self, label: str, stack: LocalStack, port: int) -> None:
        self.label = label
        self.stack = stack
        self.ready_url = f"http://127.0.0.1:{port}/ready"
        self.root: int | None = None

    def launch(self, token: bool) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def start(self, *, token: bool) -> float:
        """Start it; seconds from the command to the first /ready 200."""
        import requests

        started = time.monotonic()
        self.launch(token)
        while True:
            try:
                # a new connection each time: a kept-alive one would outlast the node's stop
                if requests.get(self.ready_url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            if not self.alive():
                raise RuntimeError(f"{self.label} exited at start")
            if time.monotonic() - started > READY_TIMEOUT_SEC:
                raise TimeoutError(f"{self.label}: /ready not 200 after {READY_TIMEOUT_SEC:g} s")
            time.sleep(READY_POLL_SEC)

    def tree(self) -> list[int]:
        assert self.root is not None
        return family(self.root)

    def stop(self) -> float:
        """SIGTERM and wait for the exit; the seconds it took."""
        raise NotImplementedError


class BridgeStart(Runtime):
    """``coda-bridge start`` (extra arguments: ``--one-process``)."""

    def __init__(self, label: str, stack: LocalStack, *extra: str) -> None:
        super().__init__(label, stack, stack.web_port)
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = stack.workdir / f"start{'-'.join(extra)}.log"

    def launch(self, token: bool) -> None:
        exe = Path(sys.executable).with_name("coda-bridge")
        argv = [str(exe) if exe.exists() else "coda-bridge", "start", *self.extra]
        env = self.stack.env()
        if token:
            env["CODA_NODE_TOKEN"] = self.stack.cloud.mint_token(self.stack.qpu_id)  # never argv
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.root = self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> float:
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            for pid in family(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()
        took = time.monotonic() - started
        self.process = None
        return took


class CodaNode(Runtime):
    """``coda-node start`` (0.1.1) on a second QPU of the same simulator."""

    QPU = "qpu-coda-node-footprint"

    def __init__(self, stack: LocalStack) -> None:
        port = free_port()
        super().__init__("coda-node", stack, port)
        stack.cloud.create_qpu(
            self.QPU, display_name="coda-node peer", native_gate_set="cz", num_qubits=5,
            connection_mode="https", redis_url=stack.cloud_redis.url,
        )  # fmt: skip
        self.node = CodaNodeProcess(stack, self.QPU, port=port)

    def launch(self, token: bool) -> None:
        import threading

        # CodaNodeProcess.start returns at the first heartbeat; time /ready from the command instead
        self._starter = threading.Thread(target=self.node.start, daemon=True)
        self._starter.start()
        while self.node.process is None:
            time.sleep(0.001)
        self.root = self.node.process.pid

    def alive(self) -> bool:
        return self.node.process is not None and self.node.process.poll() is None

    def stop(self) -> float:
        self._starter.join(30)
        assert self.node.process is not None
        process = self.node.process
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            self.node.stop()
        took = time.monotonic() - started
        self.node.process = None
        return took


def _idle(runtime: Runtime, settle_sec: float) -> dict[int, tuple[str, int, int]]:
    time.sleep(settle_sec)
    assert runtime.root is not None
    return {pid: (role(pid, runtime.root), rss_kib(pid), pss_kib(pid)) for pid in runtime.tree()}


def _measure(runtime: Runtime, args: argparse.Namespace, *, load: bool = False) -> dict[str, Any]:
    """Start (with a token), idle reading, optional load, stop; then ``--restarts`` timed restarts."""
    figures: dict[str, Any] = {"ready": [], "stop": [], "peak": collections.defaultdict(int)}
    print(f"{runtime.label}: first start...", flush=True)
    figures["ready"].append(runtime.start(token=True))
    figures["idle"] = _idle(runtime, args.settle)
    if load and args.n:
        stack = runtime.stack
        ids = stack.cloud.submit_bulk(stack.qpu_id, args.n, noop_circuit(), 100, expect="noop")
        deadline = time.monotonic() + 300
        while stack.cloud.stats(stack.qpu_id)["delivered"] < len(ids):
            for pid in runtime.tree():
                figures["peak"][pid] = max(figures["peak"][pid], rss_kib(pid))
            if time.monotonic() > deadline:
                raise TimeoutError("load phase did not finish in 300 s")
            time.sleep(PEAK_SAMPLE_SEC)
        figures["delivered"] = wait_delivered(stack.cloud, stack.qpu_id, len(ids), timeout_sec=10)[
            "delivered"
        ]
        time.sleep(args.settle)  # idle again before the timed stop
    figures["stop"].append(runtime.stop())
    for index in range(args.restarts):
        print(f"{runtime.label}: restart {index + 1}...", flush=True)
        figures["ready"].append(runtime.start(token=isinstance(runtime, CodaNode)))
        time.sleep(args.settle)
        figures["stop"].append(runtime.stop())
    return figures


def _totals(idle: dict[int, tuple[str, int, int]]) -> tuple[int, float, float]:
    return len(idle), sum(v[1] for v in idle.values()) / 1024, sum(v[2] for v in idle.values()) / 1024


def _role_table(figures: dict[str, Any]) -> str:
    idle, peak = figures["idle"], figures["peak"]
    by_role: dict[str, list[int]] = collections.defaultdict(list)
    for pid, (name, _, _) in idle.items():
        by_role[name].append(pid)
    rows = []
    for name in sorted(by_role, key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else 99):
        pids = by_role[name]
        rows.append([
            name, len(pids), f"{max(idle[p][1] for p in pids) / 1024:.1f}",
            f"{sum(idle[p][2] for p in pids) / 1024:.1f}",
            f"{max(peak.get(p, 0) for p in pids) / 1024:.1f}" if peak else "-",
        ])  # fmt: skip
    count, rss, pss = _totals(idle)
    rows.append(["all processes", count, f"{rss:.1f} (sum)", f"{pss:.1f}", "-"])
    return markdown_table(
        ["process (start)", "count", "RSS idle, MiB (each)", "PSS idle, MiB (all of them)",
         "RSS peak under load, MiB (each)"],
        rows,
    )  # fmt: skip


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-n", type=int, default=2000, help="no-op jobs of the default mode's load phase (0: none)"
    )
    parser.add_argument("--restarts", type=int, default=2, help="timed restarts after the first start")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before a reading or a stop")
    parser.add_argument("--skip-coda-node", action="store_true", help="only the two coda-bridge modes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    for label, extra in (("start", ()), ("start --one-process", ("--one-process",))):
        stack = LocalStack(env=NOOP_ENV, web=True)
        stack.start(processes=False)
        try:
            results[label] = _measure(BridgeStart(label, stack, *extra), args, load=not extra)
        finally:
            stack.stop()
    if not args.skip_coda_node:
        stack = LocalStack(web=True)
        stack.start(processes=False)
        try:
            results["coda-node 0.1.1"] = _measure(CodaNode(stack), args)
        finally:
            stack.stop()

    base = results.get("coda-node 0.1.1")
    rows = []
    for label, figures in results.items():
        count, _, pss = _totals(figures["idle"])
        ready, stop = _median(figures["ready"]), _median(figures["stop"])
        row = [label, count, f"{pss:.1f}", f"{figures['ready'][0]:.2f}", f"{ready:.2f}", f"{stop:.2f}"]
        if base is not None:
            b_count, _, b_pss = _totals(base["idle"])
            b_ready, b_stop = _median(base["ready"]), _median(base["stop"])
            row.append(
                f"{count / b_count:.1f}x / {pss / b_pss:.2f}x / {ready / b_ready:.2f}x / {stop / b_stop:.2f}x"
            )
        rows.append(row)
    headers = ["runtime", "processes", "PSS idle, MiB (tree)", "first start to /ready 200, s",
               "/ready 200, s (median)", "SIGTERM to exit idle, s (median)"]  # fmt: skip
    if base is not None:
        headers.append("ratio to coda-node (processes / PSS / ready / stop)")
    summary = markdown_table(headers, rows)

    default, one = results["start"], results["start --one-process"]
    d_count, _, d_pss = _totals(default["idle"])
    o_pss = _totals(one["idle"])[2]
    goal_rows = [
        ["start: processes", "<= 10", str(d_count), "yes" if d_count <= 10 else "no"],
        ["start: PSS idle", "<= 200 MiB", f"{d_pss:.1f} MiB", "yes" if d_pss <= 200 else "no"],
        ["start: first /ready", "<= 2 s", f"{_median(default['ready']):.2f} s",
         "yes" if _median(default["ready"]) <= 2 else "no"],
        ["start: idle stop", "<= 1 s", f"{_median(default['stop']):.2f} s",
         "yes" if _median(default["stop"]) <= 1 else "no"],
        ["one process: /ready", "<= 1.5 s", f"{_median(one['ready']):.2f} s",
         "yes" if _median(one["ready"]) <= 1.5 else "no"],
        ["one process: idle stop", "<= 1 s", f"{_median(one['stop']):.2f} s",
         "yes" if _median(one["stop"]) <= 1 else "no"],
    ]  # fmt: skip
    if base is not None:
        ratio = o_pss / _totals(base["idle"])[2]
        goal_rows.append(
            ["one process: PSS vs coda-node", "<= 1.3x", f"{ratio:.2f}x", "yes" if ratio <= 1.3 else "no"]
        )
    goals = markdown_table(["goal (issue 15)", "target", "measured", "met"], goal_rows)

    notes = [
        "Medians over the first start (provision with a token) and "
        f"{args.restarts} restart(s) (reconnect; coda-node provisions each time, as it keeps no key).",
        f"Idle readings {args.settle:g} s after /ready; every stop after {args.settle:g} s idle.",
        "Start times: " + "; ".join(
            f"{label} {', '.join(f'{s:.2f}' for s in f['ready'])} s" for label, f in results.items()
        ) + ".",
        "Stop times: " + "; ".join(
            f"{label} {', '.join(f'{s:.2f}' for s in f['stop'])} s" for label, f in results.items()
        ) + ".",
    ]  # fmt: skip
    if default.get("delivered") is not None:
        notes.append(
            f"Load (default mode): {args.n} no-op jobs in one burst ({default['delivered']} delivered)."
        )
    append_results(
        "Footprint: processes, memory, start and stop (issue 15)",
        [summary, _role_table(default), goals],
        notes,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
