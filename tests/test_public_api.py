"""The package top: every name a backend author imports resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import coda_bridge


def test_every_exported_name_resolves() -> None:
    missing = [name for name in coda_bridge.__all__ if getattr(coda_bridge, name, None) is None]
    assert missing == []


def test_importing_the_package_loads_no_subpackage() -> None:
    code = "import sys, coda_bridge; print(sorted(m for m in sys.modules if m.startswith('coda_bridge.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['coda_bridge.errors']"


def test_the_bridge_process_imports_no_executor_and_no_simulator() -> None:
    heavy = ("coda_bridge.executors", "coda_bridge.devtools.devcloud", "coda_bridge.web", "numpy")
    code = (
        "import sys, coda_bridge.cli.main, coda_bridge.pipeline.bridge;"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_device_states_are_the_qdmi_strings_and_only_idle_and_busy_take_jobs() -> None:
    # given the enum a backend's status() may return (or its strings)
    states = {state.value: state.takes_jobs for state in coda_bridge.DeviceState}
    # then it names QDMI's five states, and only idle and busy let a job start
    assert states == {"idle": True, "busy": True, "error": False, "maintenance": False, "calibration": False}
    assert coda_bridge.DeviceState("calibration") == "calibration"
    assert "DeviceState" in coda_bridge.__all__
