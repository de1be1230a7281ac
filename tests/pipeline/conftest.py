"""A whole local node for the pipeline tests: real Redis, simulator, bridge and dramatiq workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import FAST_LIMITS, stack_env

from coda_bridge.devtools.stack import LocalStack

#: A webhook retry waits at most this long (dramatiq's backoff, jittered): the delivery tests count
#: attempts and their answers, not the time between them.
WEBHOOK_MAX_BACKOFF_SEC = "0.5"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One node shared by a module's tests."""
    workdir = tmp_path_factory.mktemp("stack")
    env = stack_env(workdir, **FAST_LIMITS, CODA_WEBHOOK_MAX_BACKOFF_SEC=WEBHOOK_MAX_BACKOFF_SEC)
    with LocalStack(workdir, env=env) as node:
        yield node


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A node of its own, for tests that kill processes."""
    with LocalStack(tmp_path, env=stack_env(tmp_path, **FAST_LIMITS)) as node:
        yield node
