"""The bridge's forwarding under a byte budget, against a real broker Redis that refuses large values."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from coda_bridge.devtools.localredis import LocalRedis
from coda_bridge.pipeline.bounds import BrokerServer
from coda_bridge.pipeline.checks import REFUSAL_FIELD
from coda_bridge.pipeline.intake import StreamBridge
from coda_bridge.pipeline.timeline import Timeline
from coda_bridge.queueing.queues import EXECUTE_BATCH_ACTOR, JOBS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, create_broker
from coda_bridge.settings import load_settings
from coda_bridge.state.node_state import NodeState

QPU = "qpu-bounds-test"
STREAM, GROUP = f"qpu:{QPU}:jobs", f"qpu:{QPU}:workers"
MIB = 1024 * 1024


@pytest.fixture
def strict_broker() -> Iterator[LocalRedis]:
    """A broker Redis of its own that refuses any value over 1 MiB (its proto-max-bulk-len)."""
    with LocalRedis() as server:
        server.client().config_set("proto-max-bulk-len", str(MIB))
        yield server


@pytest.fixture
def bridge(
    clean_env: pytest.MonkeyPatch, redis_url: str, strict_broker: LocalRedis
) -> Iterator[StreamBridge]:
    settings = load_settings(
        overrides={
            "qpu_id": QPU,
            "redis_url": redis_url,
            "broker_url": strict_broker.url,
            "consumer_name": "bridge-a",
            "stream_block_ms": 50,
            "max_job_bytes": 4 * MIB,
        }
    )
    broker = create_broker(settings)
    state = NodeState(broker.client, QPU)
    state.set_executor_batch(True)
    made = StreamBridge(settings, broker, state)
    made.ensure_group()
    yield made
    broker.close()


def _queued(broker: CodaBroker) -> list[Message[Any]]:
    ids = broker.client.lrange(f"{broker.namespace}:{JOBS_QUEUE}", 0, -1)
    return [Message.decode(broker.client.hget(f"{broker.namespace}:{JOBS_QUEUE}.msgs", i)) for i in ids]


def _carried(messages: list[Message[Any]]) -> list[tuple[dict[str, str], str]]:
    out: list[tuple[dict[str, str], str]] = []
    for message in messages:
        if message.actor_name == EXECUTE_BATCH_ACTOR:
            out += [(fields, entry_id) for fields, entry_id in message.args[0]]
        else:
            out.append((message.args[0], message.args[1]))
    return out


def _job(name: str, pad: int = 0) -> dict[str, str]:
    return {"job_id": name, "callback_url": "http://cloud/cb", "ir_json": "x" * pad, "shots": "1"}


def test_a_batch_the_broker_refuses_splits_and_only_the_refused_job_fails(bridge: StreamBridge) -> None:
    # Given a small job, a 1.5 MB one (under max_job_bytes, over what the broker takes) and another small one
    cloud = redis.Redis.from_url(bridge.settings.redis_url or "", decode_responses=True)
    ids = [cloud.xadd(STREAM, _job(n, pad)) for n, pad in (("a", 0), ("big", 1_500_000), ("c", 0))]

    # When the bridge reads them (one batch at first)
    bridge.cycle()

    # Then each entry is carried exactly once; the big one as a stand-in naming the broker's refusal
    carried = _carried(_queued(bridge.broker))
    assert sorted(entry_id for _, entry_id in carried) == sorted(ids)
    by_job = {fields["job_id"]: fields for fields, _ in carried}
    assert REFUSAL_FIELD not in by_job["a"] and REFUSAL_FIELD not in by_job["c"]
    assert by_job["big"][REFUSAL_FIELD].startswith("The local broker refused the job's message (15000")
    assert "ir_json" not in by_job["big"]
    assert bridge.broker.client.ping()


def test_a_broker_that_goes_away_mid_forward_is_an_outage_not_a_refusal(
    bridge: StreamBridge, strict_broker: LocalRedis
) -> None:
    # Given a bridge that has reconciled, a new entry, and a broker that stops just as it is written to
    cloud = redis.Redis.from_url(bridge.settings.redis_url or "", decode_responses=True)
    bridge.cycle()
    cloud.xadd(STREAM, _job("a", 2_000_000))
    enqueue = bridge.broker.enqueue_many

    def broker_gone(messages: list[Message[Any]]) -> Any:
        strict_broker.stop()
        return enqueue(messages)

    bridge.broker.enqueue_many = broker_gone  # type: ignore[method-assign]

    # When the bridge forwards it, then the outage propagates (the bridge backs off; no job fails)
    with pytest.raises(redis.ConnectionError):
        bridge.cycle()
    assert cloud.xpending(STREAM, GROUP)["pending"] == 1


def test_a_broker_restarted_mid_forward_is_an_outage_though_it_answers_at_once(
    bridge: StreamBridge, strict_broker: LocalRedis
) -> None:
    # Given a bridge that has reconciled, a new small entry, and a broker that restarts as the entry is
    # written to it: the write fails, and the broker (a new server) answers right after
    cloud = redis.Redis.from_url(bridge.settings.redis_url or "", decode_responses=True)
    bridge.cycle()
    cloud.xadd(STREAM, _job("a"))

    enqueue, restarts = bridge.broker.enqueue_many, [1]

    def broker_restarted(messages: list[Message[Any]]) -> Any:
        if not restarts:
            return enqueue(messages)
        restarts.pop()
        strict_broker.stop()
        try:
            return enqueue(messages)  # (its retries meet no server)
        finally:
            strict_broker.start()  # back on the same port before the bridge looks

    bridge.broker.enqueue_many = broker_restarted  # type: ignore[method-assign]

    # When the bridge forwards it, then the outage propagates: the job is not failed as refused
    with pytest.raises(redis.ConnectionError):
        bridge.cycle()
    assert cloud.xpending(STREAM, GROUP)["pending"] == 1
    assert _queued(bridge.broker) == []  # (nothing, not a stand-in naming a refusal)
    # and the reconcile after the outage forwards the job itself
    bridge.reconciler.run_once()
    carried = _carried(_queued(bridge.broker))
    assert [(fields["job_id"], REFUSAL_FIELD in fields) for fields, _ in carried] == [("a", False)]


def test_the_timeline_shows_what_intake_did_to_each_entry(bridge: StreamBridge) -> None:
    # Given a small job, one the broker refuses (1.5 MB) and one whose id is not UTF-8
    cloud = redis.Redis.from_url(bridge.settings.redis_url or "")
    for name, pad in ((b"small", 0), (b"huge", 1_500_000), (b"bad-\xff", 0)):
        cloud.xadd(STREAM, {**_job("x", pad), "job_id": name})

    # When the bridge reads them
    bridge.cycle()

    # Then each job's timeline says what happened to it, from this process
    timeline = Timeline(bridge.broker.client, QPU, retention_sec=60)
    small, huge = timeline.read("small"), timeline.read("huge")
    bad = timeline.read(b"bad-\xff".decode("utf-8", "surrogateescape"))
    assert [e["event"] for e in small] == ["received", "queued"]
    assert [e["event"] for e in huge] == ["received", "refused"]
    assert huge[1]["reason"].startswith("The local broker refused the job's message (15000")
    assert [e["event"] for e in bad] == ["received", "refused", "acknowledged"]
    assert "not valid UTF-8" in bad[1]["reason"] and bad[2]["outcome"] == "failed"
    assert small[0]["entry"] == small[1]["entry"] and small[0]["pid"] == os.getpid()


def test_a_refused_job_s_event_is_stamped_before_its_stand_in_can_be_taken(
    bridge: StreamBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job the broker refuses (1.5 MB), and a broker on which a worker takes its stand-in (and
    # stamps what it did with it) while the stand-in's enqueue returns
    cloud = redis.Redis.from_url(bridge.settings.redis_url or "", decode_responses=True)
    cloud.xadd(STREAM, _job("huge", 1_500_000))
    enqueue_many, taken_at = bridge.broker.enqueue_many, []

    def enqueue_then_taken(messages: list[Message[Any]]) -> Any:
        sent = enqueue_many(messages)
        taken_at.append(round(time.time(), 3))
        time.sleep(0.01)  # (the enqueue's own reply is still on its way)
        return sent

    monkeypatch.setattr(bridge.broker, "enqueue_many", enqueue_then_taken)

    # When the bridge forwards it (the refused write, then the stand-in's)
    bridge.cycle()

    # Then the timeline's "refused" comes before anything a worker did with the stand-in
    (refused,) = [e for e in bridge.timeline.read("huge") if e["event"] == "refused"]
    assert taken_at and refused["at"] <= taken_at[-1]


@pytest.mark.parametrize("refuse_info", ["ACL SETUSER default -info", "ACL SETUSER default -@dangerous"])
def test_a_broker_that_refuses_info_still_fails_only_the_job_it_refuses(
    bridge: StreamBridge, strict_broker: LocalRedis, refuse_info: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker that answers but will not tell its run_id (INFO denied, as a hardened broker's ACL
    # or rename-command does), and a job over what it takes (1.5 MB) between two small ones
    strict_broker.client().execute_command(*refuse_info.split())
    with pytest.raises(redis.ResponseError):
        bridge.broker.client.info("server")
    cloud = redis.Redis.from_url(bridge.settings.redis_url or "", decode_responses=True)
    ids = [cloud.xadd(STREAM, _job(n, pad)) for n, pad in (("a", 0), ("big", 1_500_000), ("c", 0))]

    # When the bridge reads them
    with caplog.at_level(logging.WARNING):
        bridge.cycle()

    # Then the refused job alone fails (a stand-in naming the refusal), and intake does not stall on it;
    # one WARNING line says what the broker's refusal of INFO costs
    warned = [r.getMessage() for r in caplog.records if "refuses INFO" in r.getMessage()]
    assert len(warned) == 1 and "allow INFO" in warned[0]
    carried = _carried(_queued(bridge.broker))
    assert sorted(entry_id for _, entry_id in carried) == sorted(ids)
    by_job = {fields["job_id"]: fields for fields, _ in carried}
    assert by_job["big"][REFUSAL_FIELD].startswith("The local broker refused the job's message (15000")
    assert REFUSAL_FIELD not in by_job["a"] and REFUSAL_FIELD not in by_job["c"]


def test_a_broker_server_not_known_before_a_failed_write_is_not_taken_for_the_same(
    strict_broker: LocalRedis,
) -> None:
    # Given a bridge that could not ask the broker's run_id as it began reading (the broker was down,
    # restarting), and a broker server that answers since
    server = BrokerServer(strict_broker.client())
    strict_broker.stop()
    assert server.now() is None and server.run_id is None
    strict_broker.start()

    # When a write fails and the broker answers right after, then nothing says it is the server of before
    # (the failure is an outage; the bridge backs off and asks again), and from then on that server is known
    assert server.same_answers() is False
    assert server.same_answers() is True
