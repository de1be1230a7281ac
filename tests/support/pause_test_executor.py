"""An executor for the pause tests: it stamps each run's start and end, and reads its state from a file.

``metadata.source_hash`` is ``sleep:<sec>:<tag>``.  Every start and end is
appended to ``$PAUSE_TEST_EXECUTOR_LOG`` as ``start|end <unix time> <pid> <tag>``;
``status()`` answers the text of ``$PAUSE_TEST_DEVICE_STATE`` (``idle`` when the file is absent);
``calibrate()`` stamps its start and end and takes ``$PAUSE_TEST_CALIBRATE_SEC`` (1 s).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _log(event: str, tag: str) -> None:
    path = os.environ.get("PAUSE_TEST_EXECUTOR_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{event} {time.time()!r} {os.getpid()} {tag}\n")


class StampingExecutor:
    def run(self, ir: Any, shots: int) -> Any:
        source = ir.metadata.source_hash
        _log("start", source)
        mode, _, rest = source.partition(":")
        if mode == "sleep":
            time.sleep(float(rest.split(":")[0]))
        _log("end", source)
        return {
            "counts": {"0" * len(ir.measurements): shots},
            "execution_time_ms": 1.0,
            "shots_completed": shots,
        }

    def calibrate(self) -> None:
        _log("calibrate-start", "-")
        time.sleep(float(os.environ.get("PAUSE_TEST_CALIBRATE_SEC", "1")))
        _log("calibrate-end", "-")

    def status(self) -> str:
        try:
            return Path(os.environ["PAUSE_TEST_DEVICE_STATE"]).read_text().strip() or "idle"
        except (KeyError, OSError):
            return "idle"


def create_executor() -> StampingExecutor:
    return StampingExecutor()
