"""Helpers of the compat end-to-end tests: a whole node on the compat interpreter, circuits, count checks."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from compat_env import QUBIC_SRC, SUPPORT

from coda_bridge.devtools.stack import LocalStack
from coda_bridge.ops.process_list import ProcessSpec, node_processes
from coda_bridge.settings import load_settings

#: coda-qubic's example device: the Qiskit Aer simulator with depolarising noise, target cnot, 3 qubits.
QISKIT_SIM_DEVICE = QUBIC_SRC / "examples" / "device_qiskit_sim.yaml"
#: Shots per statistical circuit: enough that the noise shows and the halves of a cat state are tight.
SHOTS = 2000
#: A noisy cat state may put at most this share of its shots outside all-0 and all-1 (the example
#: device's error rates give about 2 % for a Bell pair and 3 % for a 3-qubit GHZ state).
NOISE_MAX_SHARE = 0.1
#: Allowed distance of the all-0 count from half the cat-state shots, in binomial standard deviations.
HALVES_MAX_SIGMAS = 5.0
#: How long a node may take to answer a circuit (seconds): the first run loads qiskit and coda-node.
RESULT_TIMEOUT_SEC = 90
#: Short control intervals, so heartbeats carry the connectivity soon.
FAST_NODE_ENV = {
    "CODA_HEARTBEAT_INTERVAL_SEC": "1",
    "CODA_VPN_CHECK_INTERVAL_SEC": "1",
    "CODA_CANCEL_POLL_INTERVAL_SEC": "0.05",
    "CODA_WORKER_HEARTBEAT_TIMEOUT_SEC": "5",
    "CODA_WEBHOOK_MAX_BACKOFF_SEC": "2",
}
META = {"source_hash": "compat", "compiled_at": "2026-01-01T00:00:00Z"}


class CompatStack(LocalStack):
    """A :class:`LocalStack` whose node processes run on ``python`` (the compat interpreter).

    The node's processes also start in the test's working directory, so a
    test that changes into a directory with ``site/device.yaml`` gives it to them.
    """

    def __init__(self, workdir: Path, *, python: Path, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.python = str(python)

    def specs(self) -> dict[str, ProcessSpec]:
        concurrency = int(self.extra_env.get("CODA_EXECUTOR_CONCURRENCY", "1"))
        results = self.extra_env.get("CODA_RESULT_PROCESSES")
        settings = load_settings(overrides={"executor_concurrency": concurrency, "result_processes": results})
        return {s.name: s for s in node_processes(settings, web=self.web, python=self.python)}


def node_env(**extra: str) -> dict[str, str]:
    """The extra environment of a compat node: fast ticks, one delivery process, and support/ importable
    by its processes."""
    env = {**FAST_NODE_ENV, "CODA_RESULT_PROCESSES": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def copy_device(
    directory: Path, name: str = "device.yaml", *, replace: Mapping[str, str] | None = None
) -> Path:
    """coda-qubic's qiskit_sim example device file, copied (with text replaced) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    shutil.copyfile(QISKIT_SIM_DEVICE, target)
    text = target.read_text(encoding="utf-8")
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} is not in {QISKIT_SIM_DEVICE}"
        text = text.replace(old, new)
    target.write_text(text, encoding="utf-8")
    return target


def bell(target: str = "cnot") -> dict[str, Any]:
    """(|00> + |11>)/sqrt 2: ry(pi/2) then cnot."""
    return {
        "target": target,
        "num_qubits": 2,
        "gates": [
            {"gate": "ry", "qubits": [0], "params": [math.pi / 2]},
            {"gate": "cnot", "qubits": [0, 1], "params": []},
        ],
        "measurements": [0, 1],
        "metadata": META,
    }


def ghz3() -> dict[str, Any]:
    """(|000> + |111>)/sqrt 2 on 3 qubits: ry(pi/2) then a cnot chain."""
    return {
        "target": "cnot",
        "num_qubits": 3,
        "gates": [
            {"gate": "ry", "qubits": [0], "params": [math.pi / 2]},
            {"gate": "cnot", "qubits": [0, 1], "params": []},
            {"gate": "cnot", "qubits": [1, 2], "params": []},
        ],
        "measurements": [0, 1, 2],
        "metadata": META,
    }


def illegal_cz_on_cnot() -> dict[str, Any]:
    """A ``cz`` gate in a circuit for the ``cnot`` target: not legal there."""
    return {
        "target": "cnot",
        "num_qubits": 2,
        "gates": [{"gate": "cz", "qubits": [0, 1], "params": []}],
        "measurements": [0, 1],
        "metadata": META,
    }


def cat_state_problems(counts: Mapping[str, int], width: int, shots: int) -> list[str]:
    """What is statistically wrong with ``counts`` for a noisy ``width``-qubit cat state (empty: nothing).

    Both all-0 and all-1 are symmetric, so the backend's bit order cannot matter here.
    """
    problems = []
    zeros, ones = counts.get("0" * width, 0), counts.get("1" * width, 0)
    if sum(counts.values()) != shots:
        problems.append(f"counts sum to {sum(counts.values())}, not {shots}")
    if any(len(key) != width for key in counts):
        problems.append(f"keys are not {width} bits: {sorted(counts)}")
    noise = shots - zeros - ones
    if not 0 < noise <= NOISE_MAX_SHARE * shots:
        problems.append(f"{noise} shots outside all-0 and all-1; a noisy device gives a few, at most 10 %")
    sigma = math.sqrt((zeros + ones) / 4)
    if abs(zeros - (zeros + ones) / 2) > HALVES_MAX_SIGMAS * sigma:
        problems.append(f"all-0 {zeros} and all-1 {ones} are not an even split")
    return problems


def ready(stack: LocalStack) -> tuple[int, dict[str, Any]] | None:
    """``/ready``'s status and body, or ``None`` while the probes app does not answer yet."""
    try:
        response = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=10)
    except requests.RequestException:
        return None
    body: dict[str, Any] = response.json()
    return response.status_code, body


def flip_second_qubit() -> dict[str, Any]:
    """rx(pi) on qubit 1 of 2 (target cz), measuring [0, 1]: always ``01`` on an ideal device."""
    return {
        "target": "cz",
        "num_qubits": 2,
        "gates": [
            {"gate": "rx", "qubits": [1], "params": [math.pi]},
            {"gate": "cz", "qubits": [0, 1], "params": []},
        ],
        "measurements": [0, 1],
        "metadata": META,
    }
