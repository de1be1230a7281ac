"""RecordStore on fakeredis: first writer wins, the delivery lease, the delivered mark, expiries, outages."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import fakeredis
import pytest
import redis

from coda_bridge.pipeline import job_records as records_module
from coda_bridge.pipeline.job_records import DELIVERED_TTL_SEC, RESULT_TTL_SEC, RecordStore
from coda_bridge.state.broker_keys import job_key

QPU = "qpu-records-unit"
LEASE_SEC = 8.0


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> Iterator[redis.Redis]:
    made = fakeredis.FakeRedis(server=server)
    yield made
    made.close()


@pytest.fixture
def store(client: redis.Redis) -> RecordStore:
    return RecordStore(client, QPU)


def _result(job_id: str, status: str = "completed") -> dict[str, str]:
    return {"job_id": job_id, "status": status}


def test_the_first_recorded_result_wins_and_is_kept_for_its_ttl(
    store: RecordStore, client: redis.Redis
) -> None:
    counted = store.record([("j-1", _result("j-1"))])

    again = store.record([("j-1", _result("j-1", "failed")), ("j-2", _result("j-2"))])

    assert json.loads(counted[0]) == _result("j-1")
    assert [json.loads(raw)["status"] for raw in again] == ["completed", "completed"]
    assert store.has_result("j-1") and not store.has_result("j-3")
    assert RESULT_TTL_SEC - 5 < client.ttl(job_key(QPU, "j-1")) <= RESULT_TTL_SEC
    assert store.record([]) == []


def test_one_delivery_holds_the_lease_at_a_time(store: RecordStore) -> None:
    store.record([("j-1", _result("j-1"))])

    first = store.read_and_lease("j-1", LEASE_SEC)
    second = store.read_and_lease("j-1", LEASE_SEC)

    assert json.loads(str(first[0])) == _result("j-1")
    assert first[1:] == (None, None, 0)
    assert 0 < second[3] <= LEASE_SEC


def test_a_released_lease_lets_the_next_attempt_take_it(store: RecordStore, client: redis.Redis) -> None:
    store.record([("j-1", _result("j-1"))])
    store.read_and_lease("j-1", LEASE_SEC)

    pipe = client.pipeline()
    store.release_lease("j-1", pipe)
    pipe.execute()

    assert store.read_and_lease("j-1", LEASE_SEC)[3] == 0


def test_a_delivered_mark_stands_for_the_delivery_and_takes_no_lease(
    store: RecordStore, client: redis.Redis
) -> None:
    store.record([("j-1", _result("j-1"))])
    pipe = client.pipeline()
    store.mark_delivered("j-1", "Result delivery refused: 400", pipe)
    pipe.execute()

    recorded, delivered, refused, left = store.read_and_lease("j-1", LEASE_SEC)

    assert recorded is not None and delivered is not None
    assert (refused, left) == ("Result delivery refused: 400", 0)
    assert not client.exists(store.lease_key("j-1"))
    assert DELIVERED_TTL_SEC - 5 < client.ttl(store.key("j-1")) <= DELIVERED_TTL_SEC


def test_nothing_recorded_reads_as_nothing_and_takes_no_lease(
    store: RecordStore, client: redis.Redis
) -> None:
    assert store.read_and_lease("j-none", LEASE_SEC) == (None, None, None, 0)
    assert not client.exists(store.lease_key("j-none"))


def test_progress_tells_leased_recorded_and_delivered_apart(store: RecordStore, client: redis.Redis) -> None:
    store.record([("leased", _result("leased")), ("done", _result("done")), ("waiting", _result("waiting"))])
    store.read_and_lease("leased", LEASE_SEC)
    pipe = client.pipeline()
    store.mark_delivered("done", None, pipe)
    pipe.execute()

    pipe = client.pipeline()
    store.read_progress(pipe, ["leased", "done", "waiting", "unknown"])
    progress = store.progress(pipe.execute())

    assert progress == [
        (True, True, False),
        (False, True, True),
        (False, True, False),
        (False, False, False),
    ]


def test_a_dead_lettered_result_is_kept_without_expiry(store: RecordStore, client: redis.Redis) -> None:
    store.record([("j-1", _result("j-1"))])

    store.keep("j-1")

    assert client.ttl(store.key("j-1")) == -1


def _clock(sleep: Callable[[float], None], monotonic: Callable[[], float]) -> SimpleNamespace:
    """The records module's own view of time (not the ``time`` module every other thread shares)."""
    return SimpleNamespace(sleep=sleep, monotonic=monotonic, time=time.time)


def test_a_result_is_recorded_once_the_local_redis_is_back(
    store: RecordStore, server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the outage ends during the second pause
        pauses.append(seconds)
        server.connected = len(pauses) >= 2

    monkeypatch.setattr(records_module, "time", _clock(pause, time.monotonic))
    server.connected = False

    store.record_patiently([("j-1", _result("j-1"))])

    assert pauses == [1.0, 2.0]
    assert store.has_result("j-1")


def test_a_result_gives_up_once_its_patience_is_spent(
    store: RecordStore, server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]

    def pause(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(records_module, "time", _clock(pause, lambda: now[0]))
    server.connected = False

    with pytest.raises(redis.ConnectionError):
        store.record_patiently([("j-1", _result("j-1"))])

    assert records_module.RECORD_PATIENCE_SEC - records_module.RECORD_RETRY_MAX_SEC <= now[0]
    assert now[0] <= records_module.RECORD_PATIENCE_SEC
