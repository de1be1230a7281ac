"""Heartbeats through real processes: interval under a job backlog, one per slot, rejections."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from pipeline_support import circuit

from coda_bridge.control.ticker import Tick, Ticker
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.queueing.redis_broker import create_broker
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState

pytestmark = pytest.mark.e2e

BODY_FIELDS = {"current_job", "last_job_at", "redis_healthy", "connectivity"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
#: The heartbeat interval of the control stack (tests/control/conftest.py), in seconds.
INTERVAL_SEC = 1
#: How long the backlog test watches heartbeats (ten intervals).
BACKLOG_WINDOW_SEC = 10 * INTERVAL_SEC
#: Each backlog job runs this long, so about six run in the window.
JOB_SEC = 1.5
#: How long the two-tickers test watches heartbeats (six intervals).
SLOTS_WINDOW_SEC = 6 * INTERVAL_SEC


def beats_between(stack: LocalStack, start: float, end: float) -> list[dict[str, Any]]:
    return [b for b in stack.cloud.heartbeats(stack.qpu_id) if start <= b["received_at"] < end]


def iso_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_past(stack: LocalStack, moment: float, timeout_sec: float) -> None:
    """Wait for the first heartbeat the cloud receives after ``moment`` (an event, not a sleep)."""
    wait_until(
        lambda: any(b["received_at"] >= moment for b in stack.cloud.heartbeats(stack.qpu_id)),
        timeout_sec,
        "a heartbeat after the observation window",
    )


def test_heartbeats_keep_their_interval_behind_5000_jobs(control_stack: LocalStack) -> None:
    stack = control_stack
    ids = stack.cloud.submit_bulk(
        stack.qpu_id, 5000, circuit(f"sleep:{JOB_SEC}", tag="backlog"), 10, job_id_prefix="backlog-"
    )
    cloud_redis = stack.cloud_redis.client()
    wait_until(
        lambda: cloud_redis.hget(f"qpu:job:{ids[0]}:status", "state") == "executing", 30, "the first job"
    )

    start = time.time()
    end = start + BACKLOG_WINDOW_SEC
    wait_past(stack, end, BACKLOG_WINDOW_SEC + 10)
    beats = beats_between(stack, start, end)

    times = [start] + [b["received_at"] for b in beats] + [end]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # at most one tick late: two intervals, plus a busy machine's delivery jitter
    assert max(gaps) <= 2.5 * INTERVAL_SEC, f"heartbeat gap of {max(gaps):.2f} s"
    slots = BACKLOG_WINDOW_SEC / INTERVAL_SEC
    assert slots - 2 <= len(beats) <= slots + 2
    assert all(b["jwt_valid"] and b["accepted"] for b in beats)

    position = {job_id: i for i, job_id in enumerate(ids)}
    statuses = {}
    last_seen = None
    for beat in beats:
        body = beat["body"]
        assert set(body) == BODY_FIELDS
        assert body["redis_healthy"] is True
        assert body["connectivity"] is None or isinstance(body["connectivity"], list)
        if body["last_job_at"] is not None:
            assert ISO_UTC.match(body["last_job_at"]), body["last_job_at"]
            assert last_seen is None or body["last_job_at"] >= last_seen
            last_seen = body["last_job_at"]
        job = body["current_job"]
        if job is None:
            continue
        assert job in position
        status = statuses.setdefault(job, cloud_redis.hgetall(f"qpu:job:{job}:status"))
        # the job was running when the body was built: started before, not finished before
        assert iso_ts(status["started_at"]) <= beat["received_at"] + 0.1
        if "completed_at" in status:
            assert beat["received_at"] <= iso_ts(status["completed_at"]) + 1.0
    running = [b["body"]["current_job"] for b in beats if b["body"]["current_job"]]
    assert len(running) >= len(beats) - 3, "current_job missing while jobs run back to back"
    assert len(set(running)) >= 4, "several jobs ran during the window"
    assert last_seen is not None, "last_job_at never set although jobs completed"
    finished = sum(1 for r in stack.cloud.results(stack.qpu_id).values() if r is not None)
    assert finished < 20, "the backlog was still waiting: the heartbeat did not wait behind it"


def test_one_heartbeat_per_interval_with_two_tickers_and_two_control_workers(
    control_stack: LocalStack,
) -> None:
    stack = control_stack
    stack.start_process("control#2")
    # a second bridge process (its own ticker) under another consumer name; no token: it reconnects
    stack.start_process("bridge#2", env={"CODA_CONSUMER_NAME": "second-bridge", "CODA_NODE_TOKEN": ""})
    settings = Settings(qpu_id=stack.qpu_id, broker_url=stack.broker_redis.url)
    broker = create_broker(settings)
    third = Ticker(broker, stack.qpu_id, [Tick("heartbeat", 1.0), Tick("vpn_check", 1.0)])
    third.start()
    try:
        wait_until(lambda: "Bridge reading" in stack.log_tail("bridge#2"), 30, "the second bridge")
        wait_until(lambda: "ready for action" in stack.log_tail("control#2"), 30, "the second control worker")
        # the window opens two intervals on: a tick the new control worker took while booting may land late
        start = time.time() + 2 * INTERVAL_SEC
        end = start + SLOTS_WINDOW_SEC
        wait_past(stack, end, SLOTS_WINDOW_SEC + 9)
        assert stack.children["bridge#2"].alive() and stack.children["control#2"].alive()
    finally:
        third.stop()
        third.join(2)
        broker.close()
        stack.children["bridge#2"].stop()
        stack.children["control#2"].stop()

    beats = beats_between(stack, start, end)
    slots = int(SLOTS_WINDOW_SEC / INTERVAL_SEC)
    assert slots - 1 <= len(beats) <= slots + 1, f"{len(beats)} heartbeats in {slots} intervals"
    # A beat is signed in its slot (a tick is skipped once its slot is over, and signing follows within
    # milliseconds), and a token's iat counts whole seconds, the interval: two beats of one slot share an
    # iat, however late either arrived.
    signed = Counter(b.get("iat") for b in beats)
    assert [iat for iat, n in signed.items() if n > 1] == [], (
        f"two beats for one slot: {[(b.get('iat'), round(b['received_at'] - start, 3)) for b in beats]}"
    )
    # (two ticks, heartbeat and vpn_check, in every slot but perhaps the first)
    assert third.sent + third.lost >= 2 * (slots - 1), "the in-test ticker took part in every slot"
    assert third.lost >= 1, "the tickers never contended for a slot"


def test_rejected_heartbeats_are_warnings_and_the_loop_goes_on(control_stack: LocalStack) -> None:
    stack = control_stack
    state = NodeState(stack.broker_redis.client(), stack.qpu_id)
    rejected_before = state.counters()["heartbeats_rejected"]

    for status in (500, 401):
        before = time.time()
        stack.cloud.set_fault("heartbeat", status, seconds=3, qpu_id=stack.qpu_id)
        after = time.time()  # the 3 s window opened between ``before`` and ``after``
        wait_until(
            lambda since=before: any(
                b["received_at"] > since + 3.2 for b in stack.cloud.heartbeats(stack.qpu_id, accepted=True)
            ),
            15,
            "heartbeats accepted again after the fault window",
        )
        recent = [b for b in stack.cloud.heartbeats(stack.qpu_id) if b["received_at"] >= before]
        faulted = [b for b in recent if b["fault"]]
        assert all(b["fault"] for b in recent if after <= b["received_at"] <= before + 3)
        assert all(b["status"] == status and not b["accepted"] for b in faulted)
        assert 2 <= len(faulted) <= 4, f"{len(faulted)} heartbeat requests in a 3 s fault (one a second)"
        expected = f"cloud rejected heartbeat ({status}): injected fault: HTTP {status}"
        log = (stack.workdir / "control.log").read_text()
        assert any("WARNING" in line and expected in line for line in log.splitlines()), expected

    assert state.counters()["heartbeats_rejected"] >= rejected_before + 4
    assert stack.children["control"].alive()
