"""A whole local node with its probes app under gunicorn (two workers), for the web tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_support import stack_env

from coda_bridge.devtools.stack import LocalStack

#: Where the dramatiq dashboard is mounted in the web tests.
DASHBOARD_PREFIX = "/ops/queues"


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """bridge, workers and ``coda-bridge web``, with a private HOME so control sockets can be looked for."""
    workdir = tmp_path_factory.mktemp("web-stack")
    home = workdir / "home"
    runtime_dir = workdir / "xdg-runtime"
    home.mkdir()
    runtime_dir.mkdir()
    env = stack_env(
        workdir,
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime_dir),
        CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC="2",
        CODA_WEB_WORKERS="2",
        CODA_WEBHOOK_MAX_RETRIES="3",
        # a refused result's retries wait 0.25-0.5 s each (dramatiq's jitter), not 1-2 s: the tests
        # count its attempts and its dead letter, never how long it waited between them
        CODA_WEBHOOK_MAX_BACKOFF_SEC="0.5",
        CODA_STREAM_BLOCK_MS="500",
        CODA_READY_STREAM_STALE_SEC="3",
        CODA_DASHBOARD_ENABLED="true",
        CODA_DASHBOARD_PREFIX=DASHBOARD_PREFIX,
    )
    with LocalStack(workdir, env=env, web=True) as node:
        yield node
