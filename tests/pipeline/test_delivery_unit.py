"""Deliverer on fakeredis and requests-mock: one POST per result, retries, refusals, duplicates, leases.

The cloud's Redis and the broker's are two fake servers, the cloud's HTTP
answers come from requests-mock; no network and no real sleep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import dramatiq
import fakeredis
import pytest
import redis
import requests_mock as rm
from redis.backoff import NoBackoff
from redis.retry import Retry

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.redis_keys import group_name, status_key, stream_key
from coda_bridge.cloud.signing import Signer, generate_private_key_pem, public_key_pem, verify_token
from coda_bridge.errors import WebhookError
from coda_bridge.metrics.histograms import DELIVERY_ATTEMPTS
from coda_bridge.pipeline.delivery import LEASE_MARGIN_SEC, Deliverer, DeliveryRetry, should_retry
from coda_bridge.pipeline.job_records import RecordStore
from coda_bridge.pipeline.status import CloudStatus
from coda_bridge.pipeline.timeline import Timeline
from coda_bridge.queueing.entry_index import EntryIndex
from coda_bridge.queueing.messages import delivery_message
from coda_bridge.queueing.redis_broker import broker_namespace
from coda_bridge.settings import Settings
from coda_bridge.state.broker_keys import entry_key
from coda_bridge.state.node_state import NodeState

QPU = "qpu-delivery-unit"
KID = "qpu-delivery-unit-1710000000000"
BASE = "https://cloud.test"
CALLBACK = f"{BASE}/api/internal/qpu/webhook"
RESULT = {"job_id": "j-1", "status": "completed", "counts": {"00": 10}}


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_private_key_pem()


@pytest.fixture
def cloud_redis() -> Iterator[redis.Redis]:
    made = fakeredis.FakeRedis(decode_responses=True)
    made.xgroup_create(stream_key(QPU), group_name(QPU), id="0", mkstream=True)
    yield made
    made.close()


@pytest.fixture
def local() -> Iterator[redis.Redis]:
    made = fakeredis.FakeRedis()
    yield made
    made.close()


@pytest.fixture
def http() -> Iterator[CloudClient]:
    made = CloudClient(Settings(qpu_id=QPU, webapp_url=BASE, webhook_timeout_sec=3), sleep=lambda _: None)
    yield made
    made.close()


def _deliverer(
    key_pem: str, cloud_redis: redis.Redis, local: redis.Redis, http: CloudClient, *, timeline: bool = False
) -> Deliverer:
    """A deliverer on the test's Redis servers; ``timeline`` keeps each job's timeline for a minute."""
    settings = Settings(qpu_id=QPU, webapp_url=BASE, webhook_timeout_sec=3)
    deliverer = Deliverer(
        settings,
        RecordStore(local, QPU),
        CloudStatus(cloud_redis, QPU),
        cloud=http,
        signer=Signer(key_pem, KID, QPU),
        state=NodeState(local, QPU),
        entries=EntryIndex(local, QPU, broker_namespace(QPU)),
    )
    if timeline:
        deliverer.timeline = Timeline(local, QPU, retention_sec=60)
    return deliverer


@pytest.fixture
def deliverer(key_pem: str, cloud_redis: redis.Redis, local: redis.Redis, http: CloudClient) -> Deliverer:
    return _deliverer(key_pem, cloud_redis, local, http)


def _recorded_and_pending(deliverer: Deliverer, cloud_redis: redis.Redis) -> str:
    """Record RESULT for j-1 and leave its stream entry pending at the bridge; the entry id."""
    deliverer.records.record([("j-1", RESULT)])
    entry_id = str(cloud_redis.xadd(stream_key(QPU), {"job_id": "j-1"}))
    cloud_redis.xreadgroup(group_name(QPU), "bridge-a", {stream_key(QPU): ">"})
    return entry_id


def _pending(cloud_redis: redis.Redis) -> int:
    return int(cloud_redis.xpending(stream_key(QPU), group_name(QPU))["pending"])


def test_a_result_is_posted_signed_then_its_state_written_and_entry_acknowledged(
    deliverer: Deliverer, cloud_redis: redis.Redis, key_pem: str, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})

    outcome = deliverer.deliver("j-1", CALLBACK, entry_id)

    assert outcome == "delivered"
    [request] = requests_mock.request_history
    assert request.json() == RESULT
    bearer = request.headers["Authorization"].removeprefix("Bearer ")
    assert verify_token(bearer, public_key_pem(key_pem))["sub"] == QPU
    assert cloud_redis.hget(status_key("j-1"), "state") == "completed"
    assert _pending(cloud_redis) == 0
    counters = deliverer.state.counters()
    assert (counters["jobs_completed"], counters["webhook_attempts"]) == (1, 1)


def test_a_broker_lost_as_the_cloud_accepts_still_ends_the_job_at_the_cloud(
    key_pem: str, cloud_redis: redis.Redis, http: CloudClient, requests_mock: rm.Mocker
) -> None:
    # given a recorded result whose entry is pending, and a broker that goes away as the cloud accepts
    server = fakeredis.FakeServer()
    deliverer = _deliverer(key_pem, cloud_redis, fakeredis.FakeRedis(server=server), http)
    entry_id = _recorded_and_pending(deliverer, cloud_redis)

    def accepted(request: object, context: object) -> dict[str, bool]:
        server.connected = False  # Ctrl-C under honcho: the throw-away broker stops with everything else
        return {"ok": True}

    requests_mock.post(CALLBACK, status_code=200, json=accepted)

    # when it is delivered
    outcome = deliverer.deliver("j-1", CALLBACK, entry_id)

    # then the cloud's ledger ends the job: a restart on an empty broker finds nothing to run again
    assert outcome == "delivered"
    assert requests_mock.call_count == 1
    assert cloud_redis.hget(status_key("j-1"), "state") == "completed"
    assert _pending(cloud_redis) == 0


def test_a_duplicate_message_writes_the_state_again_and_never_posts_twice(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})
    deliverer.deliver("j-1", CALLBACK, entry_id)

    again = deliverer.deliver("j-1", CALLBACK, entry_id)

    assert again == "duplicate"
    assert requests_mock.call_count == 1
    assert cloud_redis.hget(status_key("j-1"), "state") == "completed"


def test_a_5xx_raises_a_retryable_error_frees_the_lease_and_writes_no_state(
    deliverer: Deliverer, cloud_redis: redis.Redis, local: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    requests_mock.post(CALLBACK, status_code=503, json={"error": "busy"})

    with pytest.raises(DeliveryRetry) as raised:  # one WARNING line, and dramatiq retries it
        deliverer.deliver("j-1", CALLBACK, entry_id)

    assert isinstance(raised.value.__cause__, WebhookError) and raised.value.__cause__.retryable
    assert should_retry(3)(0, raised.value)
    assert not should_retry(3)(3, raised.value)
    assert not local.exists(deliverer.records.lease_key("j-1"))
    assert cloud_redis.hget(status_key("j-1"), "state") is None
    assert _pending(cloud_redis) == 1
    assert deliverer.state.counters()["webhook_failures"] == 1


def test_a_4xx_is_final_the_job_fails_and_its_entry_is_acknowledged(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    requests_mock.post(CALLBACK, status_code=400, json={"error": "bad result"})

    outcome = deliverer.deliver("j-1", CALLBACK, entry_id)
    again = deliverer.deliver("j-1", CALLBACK, entry_id)

    assert (outcome, again) == ("refused", "duplicate")
    assert requests_mock.call_count == 1
    fields = cloud_redis.hgetall(status_key("j-1"))
    assert fields["state"] == "failed"
    assert fields["error"].startswith("Result delivery refused: cloud answered webhook with 400")
    assert _pending(cloud_redis) == 0
    assert deliverer.state.counters()["jobs_failed"] == 1


def test_a_4xx_for_a_result_the_cloud_already_has_counts_as_a_duplicate(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    cloud_redis.hset(status_key("j-1"), "state", "completed")
    requests_mock.post(CALLBACK, status_code=409, json={"error": "already have it"})

    assert deliverer.deliver("j-1", CALLBACK, entry_id) == "duplicate"

    assert cloud_redis.hget(status_key("j-1"), "state") == "completed"
    assert _pending(cloud_redis) == 0


def test_a_delivery_in_flight_elsewhere_is_looked_at_again_later(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    deliverer.records.read_and_lease("j-1", 10.0)  # another delivery holds the lease

    with pytest.raises(dramatiq.Retry) as raised:
        deliverer.deliver("j-1", CALLBACK, entry_id)

    assert 10_000 <= raised.value.delay <= 10_500
    assert should_retry(0)(99, raised.value)
    assert requests_mock.call_count == 0


def test_a_failed_attempt_whose_lease_lapsed_leaves_the_next_holder_s_lease_alone(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # Given a POST that outlasts its lease: meanwhile another delivery takes the lease, then the cloud
    # answers the first one 503
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    lease = deliverer.records.lease_key("j-1")

    def slow_503(request: object, context: object) -> dict[str, str]:
        deliverer.records.client.delete(lease)  # (the first lease lapses)
        assert deliverer.records.read_and_lease("j-1", 10.0)[3] == 0  # the other delivery holds it now
        return {"error": "busy"}

    requests_mock.post(CALLBACK, status_code=503, json=slow_503)

    # When the first attempt fails and frees its lease
    with pytest.raises(dramatiq.Retry):
        deliverer.deliver("j-1", CALLBACK, entry_id)

    # Then the other delivery still holds the lease: no third POST can start beside its own
    assert deliverer.records.client.exists(lease) == 1
    assert deliverer.records.read_and_lease("j-1", 10.0)[3] > 0


def test_a_callback_off_the_clouds_origin_is_refused_without_a_request(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)

    outcome = deliverer.deliver("j-1", "https://elsewhere.test/cb", entry_id)

    assert outcome == "refused"
    assert requests_mock.call_count == 0
    assert "not the cloud's" in cloud_redis.hget(status_key("j-1"), "error")
    assert _pending(cloud_redis) == 0


def test_nothing_recorded_is_nothing_to_deliver(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    assert deliverer.deliver("j-unknown", CALLBACK, "1-0") == "missing"
    assert requests_mock.call_count == 0
    assert cloud_redis.hget(status_key("j-unknown"), "state") is None


def test_retries_stop_at_the_limit_and_never_follow_a_4xx() -> None:
    retry_when = should_retry(3)

    assert retry_when(2, WebhookError("down", status=None))
    assert not retry_when(3, WebhookError("down", status=502))
    assert not retry_when(0, WebhookError("refused", status=400))
    assert retry_when(0, redis.ConnectionError("local Redis away"))
    assert not retry_when(0, ValueError("a bug"))


def test_no_secret_of_the_delivery_reaches_the_error(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    requests_mock.post(CALLBACK, status_code=500, text="internal")

    with pytest.raises(DeliveryRetry) as raised:
        deliverer.deliver("j-1", CALLBACK, entry_id)

    bearer = requests_mock.request_history[0].headers["Authorization"].removeprefix("Bearer ")
    assert bearer not in str(raised.value) and "eyJ" not in str(raised.value)
    assert "BEGIN" not in str(raised.value)
    json.dumps(deliverer.state.counters())  # metrics stay plain numbers


def _carried_by_a_delivery(deliverer: Deliverer, local: redis.Redis, entry_id: str) -> None:
    """Record that a queued ``deliver`` message carries the entry, as the broker's enqueue hook does."""
    message = delivery_message("j-1", CALLBACK, entry_id).copy(options={"redis_message_id": "r-1"})
    pipe = local.pipeline(transaction=False)
    deliverer.entries.record(pipe, message)
    pipe.execute()


def _ok(requests_mock: rm.Mocker) -> None:
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})


def _refused(requests_mock: rm.Mocker) -> None:
    requests_mock.post(CALLBACK, status_code=422, json={"error": "bad result"})


def _already_had(requests_mock: rm.Mocker) -> None:
    requests_mock.post(CALLBACK, status_code=409, json={"error": "already have it"})


@pytest.mark.parametrize(
    ("result", "answer", "callback", "outcome", "state"),
    [
        (RESULT, _ok, CALLBACK, "delivered", "completed"),
        (
            {"job_id": "j-1", "status": "failed", "error": "device on fire"},
            _ok,
            CALLBACK,
            "delivered",
            "failed",
        ),
        (RESULT, _refused, CALLBACK, "refused", "failed"),
        (RESULT, _already_had, CALLBACK, "duplicate", "completed"),
        (RESULT, _ok, "https://elsewhere.test/cb", "refused", "failed"),
    ],
    ids=["completed", "failed-result", "4xx", "4xx-already-had", "off-origin"],
)
def test_each_terminal_delivery_leaves_nothing_pending_at_the_cloud_or_in_the_broker(
    deliverer: Deliverer,
    cloud_redis: redis.Redis,
    local: redis.Redis,
    requests_mock: rm.Mocker,
    result: dict[str, object],
    answer: Callable[[rm.Mocker], None],
    callback: str,
    outcome: str,
    state: str,
) -> None:
    # Given a recorded result whose entry is pending at the cloud and carried by a queued delivery
    deliverer.records.record([("j-1", result)])
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    _carried_by_a_delivery(deliverer, local, entry_id)
    answer(requests_mock)
    if outcome == "duplicate":
        cloud_redis.hset(status_key("j-1"), "state", "completed")

    # When it is delivered, and the same message comes again (a redelivery after a crash)
    first = deliverer.deliver("j-1", callback, entry_id)
    again = deliverer.deliver("j-1", callback, entry_id)

    # Then the job ends once, in its state, its entry acknowledged and its entry record gone; the result is
    # marked delivered, and the lease of the one POST lapses by itself (the mark stands for it)
    assert (first, again) == (outcome, "duplicate")
    assert requests_mock.call_count == (0 if callback != CALLBACK else 1)
    assert cloud_redis.hget(status_key("j-1"), "state") == state
    assert _pending(cloud_redis) == 0
    assert not local.exists(entry_key(QPU, entry_id))
    pipe = local.pipeline(transaction=False)
    deliverer.records.read_progress(pipe, ["j-1"])
    [(_, recorded, delivered)] = deliverer.records.progress(pipe.execute())
    assert recorded and delivered
    lease_ms = local.pttl(deliverer.records.lease_key("j-1"))
    assert lease_ms == -2 or 0 < lease_ms <= (3 + LEASE_MARGIN_SEC) * 1000  # gone, or lapsing (never kept)


@pytest.mark.parametrize(
    ("status", "state", "outcome", "ended"),
    [
        (200, None, "accepted", "completed"),
        (400, None, "refused", "failed"),
        (409, "completed", "already_accepted", "completed"),
    ],
)
def test_each_attempt_and_the_cloud_s_answer_go_to_the_job_s_timeline(
    key_pem: str,
    cloud_redis: redis.Redis,
    local: redis.Redis,
    http: CloudClient,
    requests_mock: rm.Mocker,
    status: int,
    state: str | None,
    outcome: str,
    ended: str,
) -> None:
    # Given a deliverer that keeps timelines, and a cloud that answers `status`
    deliverer = _deliverer(key_pem, cloud_redis, local, http, timeline=True)
    entry_id = _recorded_and_pending(deliverer, cloud_redis)
    if state:
        cloud_redis.hset(status_key("j-1"), "state", state)
    requests_mock.post(CALLBACK, status_code=status, json={"error": "no"})

    # When the result is delivered
    deliverer.deliver("j-1", CALLBACK, entry_id, attempt=2)

    # Then the timeline has the attempt with the cloud's answer, then the outcome at the cloud
    attempt, acked = deliverer.timeline.read("j-1")
    assert (attempt["event"], attempt["attempt"], attempt["outcome"], attempt["status"]) == (
        "delivery",
        2,
        outcome,
        status,
    )
    assert (acked["event"], acked["outcome"]) == ("acknowledged", ended)
    assert "counts" not in json.dumps([attempt, acked])


def test_a_dead_lettered_result_is_kept_for_replay_noted_counted_and_observed(
    key_pem: str, cloud_redis: redis.Redis, local: redis.Redis, http: CloudClient
) -> None:
    # Given a recorded result (with its expiry) and a deliverer that keeps timelines
    deliverer = _deliverer(key_pem, cloud_redis, local, http, timeline=True)
    _recorded_and_pending(deliverer, cloud_redis)
    assert local.ttl(deliverer.records.key("j-1")) > 0

    # When its delivery ran out of attempts (the fourth was the last)
    deliverer.dead_lettered("j-1", 4)

    # Then the record stays as long as its dead letter, the timeline says so and keeps it,
    # the dead letter is counted and its attempts observed
    assert local.ttl(deliverer.records.key("j-1")) == -1
    [dead] = deliverer.timeline.read("j-1")
    assert (dead["event"], dead["attempts"]) == ("dead_lettered", 4)
    assert local.ttl(deliverer.timeline.key("j-1")) == -1
    assert deliverer.state.counters()["webhook_dead_letters"] == 1
    [family] = [f for f in deliverer.histograms.families() if f.name == DELIVERY_ATTEMPTS.name]
    counts = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_count")}
    sums = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_sum")}
    assert (counts, sums) == ({"dead_lettered": 1}, {"dead_lettered": 4})


def test_a_dead_letter_noted_after_its_replay_comes_before_it_in_the_timeline(
    key_pem: str, cloud_redis: redis.Redis, local: redis.Redis, http: CloudClient
) -> None:
    # Given a result whose retries ran out a second ago, and an operator's replay of it already noted
    deliverer = _deliverer(key_pem, cloud_redis, local, http, timeline=True)
    ran_out_at = time.time() - 1
    deliverer.timeline.write([deliverer.timeline.event("j-1", "replayed", queue="results")])

    # When the dead letter's note runs only now (it waited behind the results queue)
    deliverer.dead_lettered("j-1", 4, at=ran_out_at)

    # Then the timeline reads in the order things happened
    assert [e["event"] for e in deliverer.timeline.read("j-1")] == ["dead_lettered", "replayed"]


def test_a_dead_letter_noted_after_its_replay_delivered_it_keeps_nothing_for_good(
    key_pem: str, cloud_redis: redis.Redis, local: redis.Redis, http: CloudClient
) -> None:
    # Given a dead-lettered result that an operator's replay delivered before the dead letter's note ran
    deliverer = _deliverer(key_pem, cloud_redis, local, http, timeline=True)
    _recorded_and_pending(deliverer, cloud_redis)
    pipe = local.pipeline()
    deliverer.records.mark_delivered("j-1", None, pipe)
    pipe.execute()

    # When the note runs
    deliverer.dead_lettered("j-1", 4)

    # Then the delivered record and the timeline keep their expiry (no dead letter waits for them)
    assert local.ttl(deliverer.records.key("j-1")) > 0
    assert local.ttl(deliverer.timeline.key("j-1")) > 0
    assert deliverer.state.counters()["webhook_dead_letters"] == 1


def test_a_dead_letter_that_names_no_job_is_still_counted(deliverer: Deliverer, local: redis.Redis) -> None:
    # Given a deliverer, and a dead message that names no job (a malformed one)
    # When it is dead-lettered
    deliverer.dead_lettered(None, 1)

    # Then nothing of a job is written, and the dead letter is counted
    assert deliverer.state.counters()["webhook_dead_letters"] == 1
    assert not local.keys(deliverer.records.key("*"))


def test_a_batch_s_results_are_posted_each_once_and_end_together_and_a_failed_one_is_to_try_again(
    deliverer: Deliverer, cloud_redis: redis.Redis, local: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # given three recorded results with pending entries: j-a and j-b new, j-c delivered by an earlier attempt
    entries = {}
    for job_id in ("j-a", "j-b", "j-c"):
        deliverer.records.record([(job_id, {**RESULT, "job_id": job_id})])
        entries[job_id] = str(cloud_redis.xadd(stream_key(QPU), {"job_id": job_id}))
    cloud_redis.xreadgroup(group_name(QPU), "bridge-a", {stream_key(QPU): ">"})
    pipe = local.pipeline()
    deliverer.records.mark_delivered("j-c", None, pipe)
    pipe.execute()
    # and a cloud that accepts j-a and answers 503 for j-b
    requests_mock.post(f"{CALLBACK}/j-a", status_code=200, json={"ok": True})
    requests_mock.post(f"{CALLBACK}/j-b", status_code=503, json={"error": "try later"})
    items = [(job_id, f"{CALLBACK}/{job_id}", entries[job_id]) for job_id in ("j-a", "j-b", "j-c")]

    # when the batch's first attempt is made
    outcomes, again = deliverer.deliver_many(items)

    # then j-a was posted once and ended completed; j-c was not posted again but its end written
    assert outcomes == ["delivered", "retry", "duplicate"]
    assert sorted(request.path for request in requests_mock.request_history) == [  # (posted at once)
        "/api/internal/qpu/webhook/j-a",
        "/api/internal/qpu/webhook/j-b",
    ]
    assert cloud_redis.hget(status_key("j-a"), "state") == "completed"
    assert cloud_redis.hget(status_key("j-c"), "state") == "completed"
    # and j-b is to try again as attempt 2 with the policy's backoff, its entry pending, its lease free
    [retry] = again
    assert (retry.item, retry.attempt, retry.delay_ms) == (items[1], 2, None)
    assert isinstance(retry.retry, DeliveryRetry)
    assert cloud_redis.hget(status_key("j-b"), "state") is None
    assert _pending(cloud_redis) == 1
    assert not local.exists(deliverer.records.lease_key("j-b"))
    counters = deliverer.state.counters()
    assert (counters["jobs_completed"], counters["webhook_attempts"], counters["webhook_failures"]) == (
        1,
        2,
        1,
    )


def test_a_batch_whose_status_writes_fail_is_marked_and_every_result_is_to_try_again(
    deliverer: Deliverer, cloud_redis: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # given two recorded results the cloud accepts, and a cloud Redis that refuses the status writes
    entries = {}
    for job_id in ("j-a", "j-b"):
        deliverer.records.record([(job_id, {**RESULT, "job_id": job_id})])
        entries[job_id] = str(cloud_redis.xadd(stream_key(QPU), {"job_id": job_id}))
    requests_mock.post(CALLBACK, status_code=200, json={"ok": True})
    items = [(job_id, CALLBACK, entries[job_id]) for job_id in ("j-a", "j-b")]
    nowhere = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))  # nothing listens
    deliverer.status.client = nowhere

    # when the batch is delivered, then both go on to another attempt that will not post again
    outcomes, again = deliverer.deliver_many(items)
    assert outcomes == ["delivered", "delivered"]
    assert [(each.item[0], each.attempt) for each in again] == [("j-a", 2), ("j-b", 2)]
    assert requests_mock.call_count == 2
    counters = deliverer.state.counters()  # counted with the delivered marks, before the status writes
    assert (counters["jobs_completed"], counters["webhook_attempts"]) == (2, 2)
    deliverer.status.client = cloud_redis
    assert [deliverer.deliver(*item, attempt=2) for item in items] == ["duplicate", "duplicate"]
    assert requests_mock.call_count == 2
    assert cloud_redis.hget(status_key("j-b"), "state") == "completed"


def test_a_batch_s_delivery_leases_last_a_webhook_timeout_per_round_of_its_posts(
    deliverer: Deliverer, local: redis.Redis, requests_mock: rm.Mocker
) -> None:
    # given ten recorded results: more than go out at once, so their POSTs take two rounds
    leases: list[int] = []
    items = []
    for index in range(10):
        job_id = f"j-{index}"
        deliverer.records.record([(job_id, {**RESULT, "job_id": job_id})])
        items.append((job_id, f"{CALLBACK}/{job_id}", None))

    def seen(request: object, context: object) -> dict[str, bool]:
        job_id = str(getattr(request, "path", "")).rsplit("/", 1)[-1]
        leases.append(int(local.pttl(deliverer.records.lease_key(job_id))))
        return {"ok": True}

    requests_mock.post(rm.ANY, json=seen)

    # when they are delivered together
    outcomes, again = deliverer.deliver_many(items)

    # then each POST went out under a lease of two webhook timeouts (3 s each) plus the margin
    assert outcomes == ["delivered"] * 10 and again == []
    assert min(leases) > (3 + LEASE_MARGIN_SEC) * 1000  # more than one POST's timeout and the margin
    assert max(leases) <= (2 * 3 + LEASE_MARGIN_SEC) * 1000
