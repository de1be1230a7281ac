"""The timeline's key family and event layout against a real redis-server: bounded, expiring, best effort."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from coda_bridge.devtools.stack import wait_until
from coda_bridge.pipeline.timeline import (
    JOB_ID_MAX_CHARS,
    Timeline,
    job_id_problem,
    result_summary,
    short_reason,
)
from coda_bridge.state.broker_keys import device_key, timeline_key

QPU = "qpu-tl"


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_a_timeline_expires_record_retention_sec_after_its_last_event(client: redis.Redis) -> None:
    # Given a timeline kept for 1 s
    timeline = Timeline(client, QPU, retention_sec=1)

    # When a job's events are written
    timeline.write([timeline.event("j-1", "received", entry="1-0"), timeline.event("j-1", "queued")])

    # Then they are there, expiring within the retention, and gone after it
    assert [event["event"] for event in timeline.read("j-1")] == ["received", "queued"]
    assert 0 < client.pttl(timeline_key(QPU, "j-1")) <= 1000
    wait_until(lambda: not client.exists(timeline_key(QPU, "j-1")), 10, "the timeline to expire")
    assert timeline.read("j-1") == []


def test_a_timeline_keeps_only_its_newest_events(client: redis.Redis) -> None:
    # Given a timeline capped at 5 events
    timeline = Timeline(client, QPU, retention_sec=60, max_events=5)

    # When a job that keeps failing its deliveries writes 12
    for attempt in range(1, 13):
        timeline.write([timeline.event("j-2", "delivery", attempt=attempt, outcome="retry", status=503)])

    # Then the last 5 are kept, oldest first
    assert [event["attempt"] for event in timeline.read("j-2")] == [8, 9, 10, 11, 12]


def test_a_started_event_carries_the_device_state_of_its_moment(client: redis.Redis) -> None:
    # Given the executor last reported calibration
    timeline = Timeline(client, QPU, retention_sec=60)
    client.set(device_key(QPU), "calibration")

    # When a run starts (with the batch's other events)
    timeline.write(
        [timeline.event("j-3", "acknowledged", outcome="skipped"), timeline.event("j-4", "started")],
        with_device=True,
    )
    client.set(device_key(QPU), "idle")

    # Then the start says calibration, and no other event claims a device state
    assert timeline.read("j-4")[0]["device"] == "calibration"
    assert "device" not in timeline.read("j-3")[0]


def test_a_dead_lettered_timeline_is_kept_until_a_later_event(client: redis.Redis) -> None:
    # Given a job's timeline kept for a minute
    timeline = Timeline(client, QPU, retention_sec=60)
    timeline.write([timeline.event("j-5", "delivery", attempt=1, outcome="retry")])

    # When its delivery is dead-lettered, then replayed
    timeline.write([timeline.event("j-5", "dead_lettered", attempts=4)], keep=True)
    kept = client.ttl(timeline_key(QPU, "j-5"))
    pipe = client.pipeline(transaction=False)
    timeline.execute(pipe, [timeline.event("j-5", "replayed")])

    # Then it had no expiry while dead-lettered, and expires again after the replay
    assert kept == -1
    assert 0 < client.ttl(timeline_key(QPU, "j-5")) <= 60


def test_a_failed_event_write_is_one_warning_and_the_step_goes_on(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job whose timeline key holds a value of another type
    timeline = Timeline(client, QPU, retention_sec=60)
    client.set(timeline_key(QPU, "j-6"), "a string")
    caplog.set_level(logging.WARNING)

    # When the step writes its own keys and the job's events, three times over
    for _ in range(3):
        pipe = client.pipeline(transaction=False)
        pipe.set("step-own-key", "written")
        replies = timeline.execute(pipe, [timeline.event("j-6", "delivery", attempt=1)])
        timeline.write([timeline.event("j-6", "started")], with_device=True)
        timeline.write([timeline.event("j-6", "finished")])

    # Then the step's own writes landed and answered, and one WARNING line said what was lost
    assert replies == [True] and client.get("step-own-key") == b"written"
    warned = [r for r in caplog.records if "Job timeline events not written" in r.getMessage()]
    assert len(warned) == 1 and "WRONGTYPE" in warned[0].getMessage()


def test_a_step_s_own_failed_command_still_raises(client: redis.Redis) -> None:
    # Given a step whose own command fails
    timeline = Timeline(client, QPU, retention_sec=60)
    client.set("a-string", "x")
    pipe = client.pipeline(transaction=False)
    pipe.lpush("a-string", "y")

    # When it runs with events added, then the step's error is raised, not swallowed
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        timeline.execute(pipe, [timeline.event("j-7", "delivery", attempt=1)])


def test_an_event_keeps_no_secret_and_no_result_data() -> None:
    # Given a reason carrying a JWT, a bearer header and a URL with a token in its query
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJxcHUifQ.c2lnbmF0dXJlLWJ5dGVz"
    text = f"cloud answered 503 for https://cloud.test/cb/j-1?token=s3cret (Authorization: Bearer {jwt})"

    # When it is kept in an event, and a result is summarised
    kept = short_reason(text)
    summary = result_summary('{"job_id":"j","status":"completed","counts":{"00":10}}')

    # Then none of them is there, and a result is its status and size only
    assert "s3cret" not in kept and "eyJ" not in kept and "https://cloud.test/cb/j-1" in kept
    assert summary == {"outcome": "completed", "bytes": 54, "reason": None}


@pytest.mark.parametrize(
    ("job_id", "why"),
    [
        ("", "empty"),
        ("j" * (JOB_ID_MAX_CHARS + 1), "at most"),
        ("j-1\x1b[2J", "control characters"),
        ("j-1\nforged line", "control characters"),
    ],
)
def test_a_job_id_that_cannot_be_one_is_refused_with_its_reason(job_id: str, why: str) -> None:
    problem = job_id_problem(job_id)
    assert problem is not None and why in problem
    assert "\x1b" not in problem and "\n" not in problem


def test_readable_ids_are_fine() -> None:
    assert job_id_problem("3f2a9c-job:17/ü") is None


def test_events_of_several_processes_read_in_time_order(client: redis.Redis) -> None:
    # Given two processes that wrote a job's events out of order (the later one first)
    timeline = Timeline(client, QPU, retention_sec=60)
    late = timeline.event("j-8", "delivery", attempt=1)
    early = ("j-8", {**timeline.event("j-8", "recorded")[1], "at": time.time() - 1})
    timeline.write([late])
    timeline.write([early])

    # Then the timeline reads oldest first
    assert [event["event"] for event in timeline.read("j-8")] == ["recorded", "delivery"]


def test_a_broker_that_lost_its_scripts_still_gets_the_events_and_the_step(client: redis.Redis) -> None:
    # Given a timeline that wrote before, and a broker restarted since (its script cache empty)
    timeline = Timeline(client, QPU, retention_sec=60)
    timeline.write([timeline.event("j-flush", "received")])
    client.script_flush()

    # When a step writes its own command with two events of the job
    pipe = client.pipeline(transaction=False)
    pipe.set("step-flush", "done")
    replies = timeline.execute(
        pipe, [timeline.event("j-flush", "finished"), timeline.event("j-flush", "recorded")]
    )

    # Then the step ran once, and every event is there, once, in order
    assert replies == [True]
    assert [event["event"] for event in timeline.read("j-flush")] == ["received", "finished", "recorded"]


def test_a_step_s_events_are_one_command_on_its_pipeline(client: redis.Redis) -> None:
    # Given a step with events for two jobs
    timeline = Timeline(client, QPU, retention_sec=60)
    pipe = client.pipeline(transaction=False)
    events = [timeline.event(job, kind) for job in ("j-a", "j-b") for kind in ("finished", "recorded")]

    # When the events are added to its pipeline
    timeline.add(events, pipe)

    # Then they ride on it as one command, and land on each job's own timeline, expiring
    assert len(pipe) == 1
    pipe.execute()
    assert [event["event"] for event in timeline.read("j-b")] == ["finished", "recorded"]
    assert 0 < client.ttl(timeline_key(QPU, "j-a")) <= 60
