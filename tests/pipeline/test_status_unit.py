"""CloudStatus on fakeredis: each state's fields, the acknowledgement that goes with a terminal one, outages.

The status writer is the one module that acknowledges a stream entry, so
every terminal write is checked for leaving nothing pending.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from coda_bridge.cloud.redis_keys import cancel_key, group_name, status_key, stream_key
from coda_bridge.errors import WebhookError
from coda_bridge.pipeline.status import ERROR_MAX_CHARS, CloudStatus

QPU = "qpu-status-unit"
STREAM, GROUP, CONSUMER = stream_key(QPU), group_name(QPU), "bridge-a"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def cloud(server: fakeredis.FakeServer) -> Iterator[redis.Redis]:
    made = fakeredis.FakeRedis(server=server, decode_responses=True)
    made.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    yield made
    made.close()


@pytest.fixture
def status(cloud: redis.Redis) -> CloudStatus:
    return CloudStatus(cloud, QPU)


def _read(cloud: redis.Redis, *job_ids: str) -> list[str]:
    """XADD an entry per job and read them as the bridge's consumer: each is pending."""
    ids = [str(cloud.xadd(STREAM, {"job_id": job_id})) for job_id in job_ids]
    cloud.xreadgroup(GROUP, CONSUMER, {STREAM: ">"})
    return ids


def _pending(cloud: redis.Redis) -> int:
    return int(cloud.xpending(STREAM, GROUP)["pending"])


def test_cancelled_writes_the_state_and_acknowledges_the_entry(
    cloud: redis.Redis, status: CloudStatus
) -> None:
    [entry] = _read(cloud, "j-1")

    status.cancelled("j-1", entry)

    fields = cloud.hgetall(status_key("j-1"))
    assert fields["state"] == "cancelled"
    assert (fields["message_id"], fields["qpu_id"]) == (entry, QPU)
    assert fields["cancelled_at"].endswith("Z")
    assert _pending(cloud) == 0


def test_failed_cuts_the_error_to_what_the_cloud_keeps_and_acknowledges(
    cloud: redis.Redis, status: CloudStatus
) -> None:
    [entry] = _read(cloud, "j-1")

    status.failed("j-1", "x" * (ERROR_MAX_CHARS + 100), entry)

    fields = cloud.hgetall(status_key("j-1"))
    assert fields["state"] == "failed"
    assert fields["error"] == "x" * ERROR_MAX_CHARS
    assert _pending(cloud) == 0


@pytest.mark.parametrize(
    ("payload", "refused", "state", "error"),
    [
        ({"status": "completed"}, None, "completed", None),
        ({"status": "failed", "error": "device on fire"}, None, "failed", "device on fire"),
        ({"status": "completed"}, "Result delivery refused: 400", "failed", "Result delivery refused: 400"),
    ],
    ids=["completed", "failed", "refused"],
)
def test_delivered_writes_the_terminal_state_of_the_outcome_and_acknowledges(
    cloud: redis.Redis, status: CloudStatus, payload: dict, refused: str | None, state: str, error: str | None
) -> None:
    [entry] = _read(cloud, "j-1")

    status.delivered("j-1", payload, refused, entry)

    fields = cloud.hgetall(status_key("j-1"))
    assert fields["state"] == state
    assert fields.get("error") == error
    assert f"{state}_at" in fields
    assert _pending(cloud) == 0


def test_executing_marks_each_job_and_acknowledges_nothing(cloud: redis.Redis, status: CloudStatus) -> None:
    first, second = _read(cloud, "j-1", "j-2")

    status.executing([("j-1", first), ("j-2", second)])

    assert cloud.hgetall(status_key("j-1"))["message_id"] == first
    assert {cloud.hget(status_key(j), "state") for j in ("j-1", "j-2")} == {"executing"}
    assert cloud.hget(status_key("j-2"), "qpu_id") == QPU
    assert _pending(cloud) == 2


def test_ack_acknowledges_the_entries_named_and_ignores_empty_ids(
    cloud: redis.Redis, status: CloudStatus
) -> None:
    first, _ = _read(cloud, "j-1", "j-2")

    status.ack([first, ""])
    status.ack([])

    assert _pending(cloud) == 1


def test_precheck_reads_each_jobs_state_and_cancel_key(cloud: redis.Redis, status: CloudStatus) -> None:
    cloud.hset(status_key("done"), "state", "completed")
    cloud.set(cancel_key("cancelled"), "1")

    assert status.precheck(["done", "cancelled", "new"]) == [
        ("completed", False),
        (None, True),
        (None, False),
    ]
    assert status.precheck([]) == []
    assert status.cancels_seen(["done", "cancelled"]) == {"cancelled"}
    assert status.state_of("done") == "completed"


def test_an_outage_loses_an_executing_mark_quietly_but_a_terminal_write_fails_loudly(
    server: fakeredis.FakeServer, status: CloudStatus, caplog: pytest.LogCaptureFixture
) -> None:
    server.connected = False

    with caplog.at_level(logging.WARNING):
        status.executing([("j-1", "1-0")])
    with pytest.raises(redis.ConnectionError):
        status.cancelled("j-1", "1-0")
    with pytest.raises(WebhookError, match="result of job j-1 delivered, but its status write failed"):
        status.delivered("j-1", {"status": "completed"}, None, "1-0")

    assert "Could not write status executing of job j-1" in caplog.text
    assert status.state_of("j-1") is None
