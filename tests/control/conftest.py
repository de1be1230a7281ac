"""A whole local node for the control tests: heartbeat every second, short drain so teardown is quick."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_support import stack_env

from coda_bridge.devtools.stack import LocalStack


@pytest.fixture(scope="module")
def control_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("control-stack")
    env = stack_env(workdir, CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC="2")
    with LocalStack(workdir, env=env) as node:
        yield node
