"""ClaimBook on fakeredis: one holder per job, the lease, refresh and release only by the holder."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from coda_bridge.pipeline.claims import ClaimBook
from coda_bridge.pipeline.job_records import RecordStore
from coda_bridge.state.broker_keys import claim_key
from coda_bridge.state.node_state import NodeState

QPU = "qpu-claims-unit"
#: The book's lease (``claim_lease_sec``), not the 15 s default: the book follows the setting.
LEASE_SEC = 7.0


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    made = fakeredis.FakeRedis()
    yield made
    made.close()


@pytest.fixture
def records(client: redis.Redis) -> RecordStore:
    return RecordStore(client, QPU)


@pytest.fixture
def state(client: redis.Redis) -> NodeState:
    return NodeState(client, QPU)


@pytest.fixture
def book(client: redis.Redis, records: RecordStore, state: NodeState) -> ClaimBook:
    return ClaimBook(client, QPU, records, state, lease_sec=LEASE_SEC)


def test_a_job_is_claimed_by_one_worker_at_a_time(book: ClaimBook, client: redis.Redis) -> None:
    mine, theirs = book.claim("j-1"), book.claim("j-1")

    [(taken, recorded, _)] = book.acquire([mine])
    [(also_taken, _, lease_left)] = book.acquire([theirs])

    assert (taken, recorded, also_taken) == (True, None, False)
    assert LEASE_SEC - 1 < lease_left <= LEASE_SEC
    assert client.get(claim_key(QPU, "j-1")) == mine.token.encode()
    assert book.acquire([]) == []


def test_acquire_also_reads_each_jobs_recorded_result(book: ClaimBook, records: RecordStore) -> None:
    records.record([("j-1", {"job_id": "j-1", "status": "completed"})])

    acquired = book.acquire([book.claim("j-1"), book.claim("j-2")])

    assert [taken for taken, _, _ in acquired] == [True, True]
    assert json.loads(str(acquired[0][1]))["status"] == "completed"
    assert acquired[1][1] is None


def test_only_the_holder_releases_a_claim(book: ClaimBook, client: redis.Redis, state: NodeState) -> None:
    lapsed, holder = book.claim("j-1"), book.claim("j-1")
    book.acquire([lapsed])
    client.delete(claim_key(QPU, "j-1"))  # its lease lapsed
    book.acquire([holder])
    state.jobs_started(["j-1"])

    book.release([lapsed])

    assert client.get(claim_key(QPU, "j-1")) == holder.token.encode()
    assert state.current_jobs() == []
    book.release([holder])
    assert not client.exists(claim_key(QPU, "j-1"))


def test_read_held_tells_claimed_jobs_apart(book: ClaimBook, client: redis.Redis) -> None:
    book.acquire([book.claim("held")])

    pipe = client.pipeline()
    book.read_held(pipe, ["held", "free"])

    assert pipe.execute() == [1, 0]


def test_a_refresh_extends_the_holders_lease_and_keeps_its_job_marked_running(
    book: ClaimBook, client: redis.Redis, state: NodeState
) -> None:
    claim = book.claim("j-1")
    book.acquire([claim])
    client.pexpire(claim.key, 1_000)
    state.jobs_started(["j-1"], 1.0)

    assert claim.refresh() is True

    assert LEASE_SEC * 1000 - 1_000 < client.pttl(claim.key) <= LEASE_SEC * 1000
    assert state.current_jobs() == ["j-1"]
    [(_, running_until)] = client.zrange(state.key("running"), 0, -1, withscores=True)
    assert LEASE_SEC - 1 < running_until - time.time() <= LEASE_SEC


def test_a_refresh_takes_back_a_lapsed_claim_nobody_else_took(book: ClaimBook, client: redis.Redis) -> None:
    claim = book.claim("j-1")
    book.acquire([claim])
    client.delete(claim.key)

    assert claim.refresh() is True
    assert client.get(claim.key) == claim.token.encode()


def test_a_refresh_of_a_claim_another_worker_holds_says_so_loudly(
    book: ClaimBook, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    claim, other = book.claim("j-1"), book.claim("j-1")
    book.acquire([claim])
    client.delete(claim.key)
    book.acquire([other])

    assert claim.refresh() is False

    assert client.get(claim.key) == other.token.encode()
    assert "Job j-1: its claim lapsed while it ran" in caplog.text
