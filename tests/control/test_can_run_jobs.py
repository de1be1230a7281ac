"""Heartbeats go only while the node can run jobs (issue 22, item 2): the grace, the stop, the resume."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from coda_bridge.control.heartbeat import can_run_jobs
from coda_bridge.state.node_state import NodeState
from coda_bridge.state.registry import Registration

QPU = "q-can-run"
GRACE_SEC = 60.0
INTERVAL_SEC = 30.0
LOGGER = "coda_bridge.control.heartbeat"


@pytest.fixture
def state(redis_url: str) -> Iterator[NodeState]:
    client = redis.Redis.from_url(redis_url)
    yield NodeState(client, QPU)
    client.close()


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


def test_no_ready_jobs_worker_stops_heartbeats_after_the_grace_once_and_loudly(
    state: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    # given no jobs worker with a built executor, first seen now
    start = time.time()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        # then heartbeats go on within the grace
        assert can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start)
        assert can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC - 1)
        # and stop once it has passed, tick after tick
        assert not can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC)
        assert not can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC + INTERVAL_SEC)
    # with one WARNING line naming what to do, and each withheld heartbeat counted
    stops = _lines(caplog, "heartbeats stop")
    assert [r.levelname for r in stops] == ["WARNING"]
    assert "coda-bridge doctor" in stops[0].getMessage()
    assert state.counters()["heartbeats_withheld"] == 2


def test_heartbeats_resume_when_a_jobs_worker_is_ready(
    state: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    # given heartbeats withheld for want of a ready jobs worker
    start = time.time()
    can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start)
    assert not can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC)
    # when a jobs worker builds its executor
    worker = Registration(state.client, QPU, "jobs").start()
    try:
        worker.executor_built()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            # then heartbeats go again, said once
            assert can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC + 1)
            assert can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC + 2)
        assert len(_lines(caplog, "heartbeats resume")) == 1
    finally:
        worker.stop()
    # and a later absence gets a whole grace again
    assert can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC + 3)


def test_a_worker_still_building_its_executor_is_not_ready(state: NodeState) -> None:
    # given a jobs worker registered, its executor not built (it is about to exit 78)
    worker = Registration(state.client, QPU, "jobs").start()
    try:
        start = time.time()
        can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start)
        # then after the grace heartbeats stop all the same
        assert not can_run_jobs(state, GRACE_SEC, INTERVAL_SEC, now=start + GRACE_SEC)
    finally:
        worker.stop()


def test_the_absence_is_forgotten_when_nobody_looks(state: NodeState) -> None:
    # given an absence noted by a node that then stopped (nothing looks again)
    state.no_jobs_worker_since(0.2, now=time.time() - 3600)
    key = state.key("no_jobs_worker_since")
    # then its mark lapses, so a later start does not inherit it
    deadline = time.monotonic() + 10
    while state.client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state.client.exists(key)
