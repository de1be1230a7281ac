"""A local cloud (two Redis servers, the simulator, a registered QPU) for the operations tests.

The node's processes are started by the command under test (``coda-bridge
start``, ``honcho start``), not by the stack.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coda_bridge.devtools.stack import LocalStack

# ops_support (helpers shared by these tests) lives beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def cloud_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """Both Redis servers and the simulator with the QPU registered; no node processes.

    The node it is for runs the no-op executor, named: a node with none configured refuses to start.
    """
    stack = LocalStack(tmp_path / "stack", env={"CODA_EXECUTOR_FACTORY": "noop"})
    (tmp_path / "stack").mkdir()
    try:
        stack.start(processes=False)
        yield stack
    finally:
        stack.stop()
