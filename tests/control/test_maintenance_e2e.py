"""A maintenance window through real processes: it starts in a few seconds, pauses, calibrates, resumes."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pipeline_support import circuit, stack_env

from coda_bridge.control.pause_book import PauseBook
from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

#: The window begins this long after the node's processes start (up well before) and lasts this long.
LEAD_SEC = 10
WINDOW_SEC = 6
#: The node must be up this long before the window begins (the test submits its jobs 3 s before it).
UP_BEFORE_SEC = 5
#: A run that passed its check an instant before the window may start just after it.
START_GRACE_SEC = 1.0


def hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


@pytest.fixture(scope="module")
def window_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, float, float]]:
    workdir = tmp_path_factory.mktemp("window-stack")
    env = stack_env(
        workdir,
        CODA_EXECUTOR_FACTORY="pause_test_executor:create_executor",
        PAUSE_TEST_EXECUTOR_LOG=str(workdir / "stamps.log"),
        PAUSE_TEST_CALIBRATE_SEC="1",
        CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC="2",
    )
    # Redis twice and the simulator first, so the window's lead only covers the node's own start
    node = LocalStack(workdir, env=env).start(processes=False)
    try:
        # a node that came up too late for its window (a busy machine) is started again with a later one
        for lead_sec in (LEAD_SEC, 2 * LEAD_SEC, 4 * LEAD_SEC):
            begins = math.ceil(time.time()) + lead_sec
            ends = begins + WINDOW_SEC
            day = datetime.fromtimestamp(begins, UTC).strftime("%a").lower()
            node.extra_env["CODA_MAINTENANCE_WINDOWS"] = f"{day} {hms(begins)}-{hms(ends)}"
            node.start_node()
            if time.time() < begins - UP_BEFORE_SEC:
                yield node, float(begins), float(ends)
                return
            node.stop_node()
    finally:
        node.stop(drain=False)  # thrown away whole: killed, not drained
    pytest.fail(f"the node never came up {UP_BEFORE_SEC} s before its window, even {4 * LEAD_SEC} s ahead")


def stamps(stack: LocalStack) -> list[tuple[str, float]]:
    path = stack.workdir / "stamps.log"
    text = path.read_text() if path.exists() else ""
    lines = text[: text.rfind("\n") + 1].splitlines()  # (a line being written is read next time)
    return [(line.split(" ")[0], float(line.split(" ")[1])) for line in lines]


def test_a_window_pauses_the_node_runs_the_calibration_and_resumes_at_its_end(
    window_stack: tuple[LocalStack, float, float],
) -> None:
    stack, begins, ends = window_stack
    assert time.time() < begins - 3, "the node took too long to start for this window"
    # given jobs running as the window comes (24 jobs of 0.3 s, 3 s before it)
    wait_until(lambda: time.time() >= begins - 3, begins - time.time(), "3 s before the window")
    ids = stack.cloud.submit_bulk(stack.qpu_id, 24, circuit("sleep:0.3", tag="w"), 10, job_id_prefix="w-")

    # when the window begins, the node is paused until its end, the window named as the note
    book = PauseBook(stack.broker_redis.client(), stack.qpu_id)
    pause = wait_until(book.current, LEAD_SEC, "the window's pause")
    assert pause.note.startswith("maintenance window ")
    assert begins <= pause.since < begins + 3
    assert pause.until == ends

    # then every job completes, the last ones after the window
    results = stack.cloud.wait_for_results(ids, timeout_sec=120)
    assert all(r["status"] == "completed" for r in results.values())

    # and the timeline: jobs ran up to the window; the running ones ended; calibrate() ran once;
    # no job started until the window's end
    timeline = stamps(stack)
    calibrations = [at for kind, at in timeline if kind == "calibrate-start"]
    assert len(calibrations) == 1
    calibrated, calibrated_end = calibrations[0], next(at for k, at in timeline if k == "calibrate-end")
    starts = [at for kind, at in timeline if kind == "start"]
    ends_of_runs = [at for kind, at in timeline if kind == "end"]
    assert any(at < pause.since for at in starts)
    assert pause.since <= calibrated and calibrated_end - calibrated >= 1.0
    assert all(at <= calibrated for at in ends_of_runs if at < calibrated_end)  # no run beside calibrate()
    assert [at - pause.since for at in starts if pause.since + START_GRACE_SEC <= at < ends] == []
    assert any(at >= ends for at in starts)
    log = (stack.workdir / "jobs.log").read_text(errors="replace")
    assert "Maintenance window" in log and "calibrate() finished" in log
