"""An executor factory whose build waits for a gate the test opens: a jobs worker caught mid-build.

The factory marks ``BUILDING`` in its folder (``GATED_EXECUTOR_DIR``) when a
build begins, then returns only once ``OPEN`` is there (or after
:data:`GIVE_UP_SEC`, so a test that failed leaves no worker waiting forever);
its executor answers all zeros.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["FACTORY", "building", "create_executor", "gated_env", "open_gate"]

#: The factory, as ``CODA_EXECUTOR_FACTORY`` names it.
FACTORY = "gated_executor:create_executor"
#: The longest a build waits for its gate, in seconds.
GIVE_UP_SEC = 300.0
#: How often a waiting build looks at the gate, in seconds.
GATE_POLL_SEC = 0.05
SUPPORT = Path(__file__).resolve().parent


class ZerosExecutor:
    def run(self, ir: Any, shots: int) -> dict[str, Any]:
        counts = {"0" * len(ir.measurements): shots}
        return {"counts": counts, "execution_time_ms": 0.0, "shots_completed": shots}


def create_executor() -> ZerosExecutor:
    folder = Path(os.environ["GATED_EXECUTOR_DIR"])
    (folder / "BUILDING").touch()
    deadline = time.monotonic() + GIVE_UP_SEC
    while not (folder / "OPEN").exists() and time.monotonic() < deadline:
        time.sleep(GATE_POLL_SEC)
    return ZerosExecutor()


def gated_env(folder: Path) -> dict[str, str]:
    """The environment that selects this factory, its gate in ``folder`` (closed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
    return {"CODA_EXECUTOR_FACTORY": FACTORY, "GATED_EXECUTOR_DIR": str(folder), "PYTHONPATH": path}


def building(folder: Path) -> bool:
    """Whether a build began."""
    return (folder / "BUILDING").exists()


def open_gate(folder: Path) -> None:
    """Let every build, waiting or to come, finish."""
    (folder / "OPEN").touch()
