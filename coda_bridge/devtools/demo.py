"""``coda-bridge demo``: a whole node on this machine, a handful of circuits, checked results.

With nothing configured it starts two private Redis servers, the local
cloud simulator and the node's processes (:class:`~coda_bridge.devtools.stack.LocalStack`)
with the state-vector simulator as executor, submits a Bell pair, a GHZ
state, a rotation sweep, an invalid circuit and a job it cancels while it
runs, shows a progress bar while results arrive, prints them with text
histograms, checks each against what physics (or the protocol) says, and
stops everything it started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ..circuits.ir import Circuit
from ..circuits.qasm import qasm_to_ir
from ..errors import CodaError, ExecutorError
from ..executors.simulator import StateVectorExecutor
from ..executors.simulator import create_executor as create_simulator
from .stack import LocalStack
from .submit import histogram_lines

__all__ = ["DemoExecutor", "create_executor", "demo_jobs", "run_demo"]

#: How long the demo waits for all its results.
RESULTS_TIMEOUT_SEC = 45.0
#: How long the demo waits for the slow job to start before it cancels it.
CANCEL_START_TIMEOUT_SEC = 20.0
#: Longest idle time an ``id`` gate may ask the demo executor to wait out.
IDLE_MAX_SEC = 60.0
#: How often the demo polls the simulator for results.
POLL_SEC = 0.1
#: Seconds the slow job would idle if nobody cancelled it.
SLOW_JOB_IDLE_SEC = 30.0
#: Rotation angles of the sweep (multiples of pi).
SWEEP_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Histogram bar width in the result table.
BAR_WIDTH = 24
_METADATA = {"source_hash": "coda-bridge-demo", "compiled_at": "2026-01-01T00:00:00Z"}


class DemoExecutor:
    """The state-vector simulator, plus real idle time: each ``id`` gate's duration (seconds) is waited out.

    That makes a job that runs long enough to be cancelled while it runs,
    and cancelling it ends the wait at once.
    """

    def __init__(self, inner: StateVectorExecutor) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._running: set[threading.Event] = set()

    def run(self, ir: Circuit, shots: int) -> Any:
        idle = min(sum(g.params[0] for g in ir.gates if g.gate == "id" and g.params), IDLE_MAX_SEC)
        cancelled = threading.Event()
        with self._lock:
            self._running.add(cancelled)
        try:
            if idle > 0 and cancelled.wait(idle):
                raise ExecutorError("cancelled")
            return self.inner.run(ir, shots)
        finally:
            with self._lock:
                self._running.discard(cancelled)

    def cancel_current_job(self) -> None:
        with self._lock:
            for event in self._running:
                event.set()
        self.inner.cancel_current_job()


def create_executor(settings: Any = None) -> DemoExecutor:
    """Factory for ``CODA_EXECUTOR_FACTORY=coda_bridge.devtools.demo:create_executor``."""
    return DemoExecutor(create_simulator(settings))


# -- the circuits and what they must give --


@dataclass
class DemoJob:
    """One submitted circuit, what came back, and whether it is what it should be."""

    label: str
    circuit: dict[str, Any]
    check: Callable[[DemoJob], str | None]  # None when right, else what is wrong
    validate: bool = True
    cancel: bool = False
    expected: str = ""
    job_id: str = ""
    result: dict[str, Any] | None = None
    state: str = ""
    webhooks: int = 0
    seen_running: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state == "cancelled" if self.cancel else self.result is not None

    @property
    def counts(self) -> dict[str, int]:
        return dict((self.result or {}).get("counts") or {})


def _qasm(body: str, qubits: int) -> dict[str, Any]:
    text = f"OPENQASM 3;\nqubit[{qubits}] q;\nbit[{qubits}] c;\n{body}\nc = measure q;\n"
    return qasm_to_ir(text, "cz").to_dict()


def _ir(num_qubits: int, gates: list[dict[str, Any]], measurements: list[int]) -> dict[str, Any]:
    return {
        "version": "1.0",
        "target": "cz",
        "num_qubits": num_qubits,
        "gates": gates,
        "measurements": measurements,
        "metadata": dict(_METADATA),
    }


def _only(allowed: set[str]) -> Callable[[DemoJob], str | None]:
    def check(job: DemoJob) -> str | None:
        if not job.result or job.result.get("status") != "completed":
            return f"expected completed, got {(job.result or {}).get('status')}"
        stray = sorted(set(job.counts) - allowed)
        if stray:
            return f"unexpected outcomes {', '.join(stray)}"
        if set(job.counts) != allowed:
            return f"expected every one of {', '.join(sorted(allowed))}"
        return None

    return check


def _rotation(theta: float, shots: int) -> Callable[[DemoJob], str | None]:
    expected = math.sin(theta / 2) ** 2
    tolerance = 5 * math.sqrt(max(expected * (1 - expected), 1e-4) / shots) + 0.01

    def check(job: DemoJob) -> str | None:
        if not job.result or job.result.get("status") != "completed":
            return f"expected completed, got {(job.result or {}).get('status')}"
        p1 = job.counts.get("1", 0) / max(sum(job.counts.values()), 1)
        if abs(p1 - expected) > tolerance:
            return f"P(1) = {p1:.3f}, expected {expected:.3f} ± {tolerance:.3f}"
        return None

    return check


def _failed_naming(gate: str) -> Callable[[DemoJob], str | None]:
    def check(job: DemoJob) -> str | None:
        if not job.result or job.result.get("status") != "failed":
            return f"expected failed, got {(job.result or {}).get('status')}"
        if gate not in str(job.result.get("error", "")):
            return f"the error does not name the gate {gate!r}"
        return None

    return check


def _cancelled(job: DemoJob) -> str | None:
    if job.state != "cancelled":
        return f"expected status cancelled, got {job.state or 'nothing'}"
    if not job.seen_running:
        return "cancelled, but before it started running"
    if job.webhooks or job.result is not None:
        return "a cancelled job must send no result webhook"
    return None


def demo_jobs(shots: int) -> list[DemoJob]:
    """The demo's circuits, the slow one (to cancel) first so it starts at once."""
    jobs = [
        DemoJob(
            "cancelled mid-run",
            _ir(1, [{"gate": "id", "qubits": [0], "params": [SLOW_JOB_IDLE_SEC]}], [0]),
            _cancelled,
            cancel=True,
            expected="status cancelled, no webhook",
        ),
        DemoJob("Bell pair", _qasm("h q[0];\ncx q[0], q[1];", 2), _only({"00", "11"}), expected="00 and 11"),
        DemoJob(
            "GHZ, 3 qubits",
            _qasm("h q[0];\ncx q[0], q[1];\ncx q[1], q[2];", 3),
            _only({"000", "111"}),
            expected="000 and 111",
        ),
    ]
    for step in SWEEP_STEPS:
        theta = step * math.pi
        jobs.append(
            DemoJob(
                f"ry({step:g}π)",
                _ir(1, [{"gate": "ry", "qubits": [0], "params": [theta]}], [0]),
                _rotation(theta, shots),
                expected=f"P(1) ≈ {math.sin(theta / 2) ** 2:.3f}",
            )
        )
    jobs.append(
        DemoJob(
            "invalid (cnot on cz)",
            _ir(
                2,
                [{"gate": "ry", "qubits": [0], "params": [1.0]}, {"gate": "cnot", "qubits": [0, 1]}],
                [0, 1],
            ),
            _failed_naming("cnot"),
            validate=False,
            expected="failed, naming the gate",
        )
    )
    return jobs


# -- running it --


def _stop_everything(stack: LocalStack, interrupted: threading.Event) -> None:
    """SIGTERM every node process at once (faster than one by one), then stop the stack; a Ctrl-C meanwhile
    is only noted (the stop goes on)."""
    previous = {s: signal.signal(s, lambda *_: interrupted.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in stack.children.values():
            child.signal(signal.SIGTERM)
        stack.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _without_site_settings() -> Iterator[None]:
    """Hide the caller's ``CODA_`` variables and settings files: the demo runs with nothing configured."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CODA_")}
    for name in saved:
        del os.environ[name]
    os.environ["CODA_SETTINGS_FILES"] = os.devnull
    try:
        yield
    finally:
        os.environ.pop("CODA_SETTINGS_FILES", None)
        os.environ.update(saved)


def _wait_for_results(stack: LocalStack, jobs: Sequence[DemoJob]) -> None:
    cloud = stack.cloud
    slow = next(job for job in jobs if job.cancel)
    deadline = time.monotonic() + RESULTS_TIMEOUT_SEC
    cancel_by = time.monotonic() + CANCEL_START_TIMEOUT_SEC
    cancel_sent = False
    with click.progressbar(length=len(jobs), label="results", show_pos=True) as bar:
        while True:
            results = cloud.results(stack.qpu_id)
            arrived = 0
            for job in jobs:
                if not job.done:
                    job.result = results.get(job.job_id)
                    if job.cancel:
                        status = cloud.job(job.job_id).get("status") or {}  # none until the node writes one
                        job.state = str(status.get("state", ""))
                        job.seen_running = job.seen_running or job.state == "executing"
                if job.done:
                    arrived += 1
            bar.update(arrived - bar.pos)
            if not cancel_sent and (slow.state == "executing" or time.monotonic() > cancel_by):
                cloud.cancel(slow.job_id)
                cancel_sent = True
            if arrived == len(jobs):
                return
            if time.monotonic() > deadline:
                missing = ", ".join(job.label for job in jobs if not job.done)
                raise CodaError(f"the demo timed out after {RESULTS_TIMEOUT_SEC:g} s waiting for: {missing}")
            time.sleep(POLL_SEC)


def _report(jobs: Sequence[DemoJob], echo: Callable[[str], None]) -> bool:
    echo("")
    echo(f"{'circuit':<22} {'outcome':<10} {'expected':<28} check")
    echo("-" * 72)
    all_ok = True
    for job in jobs:
        problem = job.check(job)
        all_ok = all_ok and problem is None
        outcome = job.state if job.cancel else str((job.result or {}).get("status", "missing"))
        verdict = "ok" if problem is None else f"WRONG: {problem}"
        echo(f"{job.label:<22} {outcome:<10} {job.expected:<28} {verdict}")
        if job.counts:
            for line in histogram_lines(job.counts, BAR_WIDTH):
                echo(f"    {line}")
        elif job.result and job.result.get("error"):
            echo(f"    error: {job.result['error']}")
    echo("-" * 72)
    return all_ok


def run_demo(
    *, shots: int = 1000, workdir: Path | None = None, echo: Callable[[str], None] = click.echo
) -> bool:
    """Run the demo; True when every expected outcome arrived.  Everything started is stopped."""
    web = importlib.util.find_spec("coda_bridge.web.probes_app") is not None
    env = {
        "CODA_EXECUTOR_FACTORY": "coda_bridge.devtools.demo:create_executor",
        "CODA_SIMULATOR_SEED": "7",
        "CODA_HEARTBEAT_INTERVAL_SEC": "5",
    }
    started = time.monotonic()
    with _without_site_settings():
        return _run(shots, workdir, env, web=web, started=started, echo=echo)


def _run(
    shots: int,
    workdir: Path | None,
    env: dict[str, str],
    *,
    web: bool,
    started: float,
    echo: Callable[[str], None],
) -> bool:
    interrupted = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = LocalStack(workdir, qpu_id="demo-qpu", native_gate_set="cz", num_qubits=5, env=env, web=web)
    try:
        echo("Starting two Redis servers, the local Coda cloud simulator and the node ...")
        stack.start()
        names = ", ".join(stack.children)
        echo(
            f"Cloud simulator at {stack.cloud.base_url}; QPU {stack.qpu_id} provisioned; processes: {names}."
        )
        jobs = demo_jobs(shots)
        for job in jobs:
            job.job_id = stack.cloud.submit(stack.qpu_id, job.circuit, shots, validate=job.validate)
        echo(f"Submitted {len(jobs)} jobs of {shots} shots.")
        _wait_for_results(stack, jobs)
        for job in jobs:
            job.webhooks = len(stack.cloud.webhooks(job.job_id))
        all_ok = _report(jobs, echo)
        elapsed = time.monotonic() - started
        echo(
            f"All {len(jobs)} outcomes as expected ({elapsed:.1f} s)."
            if all_ok
            else "Some outcomes were not as expected."
        )
        return all_ok
    finally:
        echo("Stopping everything the demo started ...")
        _stop_everything(stack, interrupted)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if interrupted.is_set():  # Ctrl-C stops the servers too: an error it caused is the interrupt
            raise KeyboardInterrupt
