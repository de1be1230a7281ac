"""NodeState on fakeredis, with a fake wall clock: every getter and setter, expiries, counters, pipelines.

The clock is ``time.time`` itself, patched, so NodeState's marks and
fakeredis's key expiry both follow it: an expiry is tested by moving the
clock, never by waiting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from coda_bridge.state.node_state import COUNTERS, RUNNING_TTL_SEC, NodeState, utc_iso

QPU = "qpu-state"
#: 2027-01-15T08:00:00Z, plus a fraction.
T0 = 1_800_000_000.125


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock(T0)
    monkeypatch.setattr(time, "time", made)
    return made


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """The broker client answers bytes, the probes' client text: NodeState must read both."""
    made = fakeredis.FakeRedis(decode_responses=request.param)
    yield made
    made.close()


@pytest.fixture
def state(client: redis.Redis, clock: Clock) -> NodeState:
    return NodeState(client, QPU)


# -- keys --


def test_every_key_lives_under_the_qpus_node_prefix(state: NodeState, client: redis.Redis) -> None:
    # given every kind of write
    state.jobs_started(["j-1"])
    state.set_last_job_at()
    state.set_cloud_redis(True, 90)
    state.stream_read()
    state.set_vpn_state("ready", 30, "ok")
    state.set_executor_batch(True)
    state.set_connectivity([(0, 1)])
    state.heartbeat_accepted()
    state.count("jobs_completed")

    # then every key is coda-bridge:{qpu_id}:node:{name}
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in client.keys("*"))
    assert keys == [
        f"coda-bridge:{QPU}:node:{name}"
        for name in sorted(
            [
                "running",
                "last_job_at",
                "cloud_redis",
                "stream_read_at",
                "vpn_state",
                "vpn_detail",
                "executor_batch",
                "connectivity",
                "heartbeat_ok_at",
                "counters",
            ]
        )
    ]


def test_two_qpus_on_one_redis_do_not_see_each_others_state(client: redis.Redis, clock: Clock) -> None:
    # given two QPUs sharing one broker Redis
    a, b = NodeState(client, "qpu-a"), NodeState(client, "qpu-b")

    # when only one of them writes
    a.jobs_started(["j-1"])
    a.set_vpn_state("ready", 30)
    a.count("jobs_failed", 3)
    a.set_connectivity([(0, 1)])

    # then the other reads its own defaults
    assert b.current_jobs() == []
    assert b.vpn_state() == "booting"
    assert b.counters()["jobs_failed"] == 0.0
    assert b.connectivity() is None
    assert a.counters()["jobs_failed"] == 3.0


# -- jobs running now --


def test_running_jobs_come_back_oldest_mark_first_and_the_newest_is_current(
    state: NodeState, clock: Clock
) -> None:
    # given jobs marked at different times (the first one still being recorded behind the device)
    state.jobs_started(["j-b"])
    clock.advance(1)
    state.jobs_started(["j-a", "j-c"])

    # when the running jobs are read
    # then the oldest mark is first, and the newest is the current job: the one on the device
    assert state.current_jobs() == ["j-b", "j-a", "j-c"]
    assert state.current_job() == "j-c"


def test_no_running_job_reads_as_none(state: NodeState) -> None:
    assert state.current_jobs() == []
    assert state.current_job() is None


def test_a_mark_lapses_after_its_ttl_and_is_pruned(
    state: NodeState, client: redis.Redis, clock: Clock
) -> None:
    # given a job marked with the default lease
    state.jobs_started(["j-1"])

    # when its lease has nearly run out, it still runs
    clock.advance(RUNNING_TTL_SEC - 0.1)
    assert state.current_jobs() == ["j-1"]

    # when it has run out (its worker died without ending it), it is gone and removed
    clock.advance(0.2)
    assert state.current_jobs() == []
    assert client.zcard(state.key("running")) == 0


def test_a_custom_ttl_is_the_marks_deadline(state: NodeState, client: redis.Redis) -> None:
    state.jobs_started(["j-1", "j-2"], ttl_sec=5)
    assert client.zscore(state.key("running"), "j-1") == pytest.approx(T0 + 5)
    assert client.zscore(state.key("running"), "j-2") == pytest.approx(T0 + 5)


def test_alive_renews_a_running_mark(state: NodeState, clock: Clock) -> None:
    # given a job marked at T0 and renewed 20 s later
    state.jobs_started(["j-1"], ttl_sec=30)
    clock.advance(20)
    state.job_alive("j-1", ttl_sec=30)

    # when the first lease would have lapsed, it still runs; when the renewed one lapses, it is gone
    clock.advance(15)
    assert state.current_jobs() == ["j-1"]
    clock.advance(15.1)
    assert state.current_jobs() == []


def test_alive_never_brings_back_a_job_that_ended(state: NodeState, client: redis.Redis) -> None:
    # given a job that ended, and one that never started
    state.jobs_started(["j-1"])
    state.jobs_ended(["j-1"])

    # when a late renewal of each arrives
    state.job_alive("j-1")
    state.job_alive("j-never")

    # then neither is running
    assert state.current_jobs() == []
    assert client.zcard(state.key("running")) == 0


def test_ending_removes_only_the_given_jobs(state: NodeState) -> None:
    state.jobs_started(["j-1", "j-2", "j-3"])
    state.jobs_ended(["j-1", "j-3", "j-unknown"])
    assert state.current_jobs() == ["j-2"]


def test_empty_batches_are_no_ops(state: NodeState, client: redis.Redis) -> None:
    # when empty batches are started and ended (ZADD and ZREM with no member would be an error)
    state.jobs_started([])
    state.jobs_ended([])
    pipe = client.pipeline()
    state.jobs_started([], pipe=pipe)
    state.jobs_ended([], pipe=pipe)

    # then nothing was queued or written
    assert len(pipe) == 0
    assert client.exists(state.key("running")) == 0


def test_pipeline_forms_write_nothing_until_the_pipeline_runs(state: NodeState, client: redis.Redis) -> None:
    # given one pipeline carrying a start, a renewal, an end, the last job time and two counters
    state.jobs_started(["j-0"])
    pipe = client.pipeline(transaction=False)
    state.jobs_started(["j-1", "j-2"], pipe=pipe)
    state.job_alive("j-0", ttl_sec=100, pipe=pipe)
    state.jobs_ended(["j-2"], pipe=pipe)
    state.set_last_job_at(T0, pipe=pipe)
    state.count("jobs_completed", pipe=pipe)
    state.count("executor_seconds", 0.5, pipe=pipe)

    # then before it runs, nothing changed
    assert state.current_jobs() == ["j-0"]
    assert state.last_job_at() is None
    assert state.counters()["jobs_completed"] == 0.0

    # and once it runs, every write is there, in order
    pipe.execute()
    assert state.current_jobs() == ["j-1", "j-0"]  # j-0 renewed to T0 + 100, j-1 marked to T0 + 30
    assert state.last_job_at() == utc_iso(T0)
    assert state.counters()["jobs_completed"] == 1.0
    assert state.counters()["executor_seconds"] == 0.5


def test_an_empty_pipeline_is_still_used_not_mistaken_for_none(state: NodeState, client: redis.Redis) -> None:
    # given a fresh pipeline with no command yet (len 0: falsy in some redis-py versions)
    pipe = client.pipeline()
    assert len(pipe) == 0

    # when a counter and a mark are queued on it
    state.count("heartbeats_sent", pipe=pipe)
    state.job_alive("j-1", pipe=pipe)

    # then they went to the pipeline, not straight to Redis
    assert len(pipe) == 2
    assert state.counters()["heartbeats_sent"] == 0.0
    pipe.execute()
    assert state.counters()["heartbeats_sent"] == 1.0


# -- last successful job --


def test_last_job_at_round_trips_as_iso_utc_with_milliseconds(state: NodeState, clock: Clock) -> None:
    assert state.last_job_at() is None
    state.set_last_job_at()
    assert state.last_job_at() == "2027-01-15T08:00:00.125Z"
    state.set_last_job_at(0)
    assert state.last_job_at() == "1970-01-01T00:00:00.000Z"


def test_last_job_at_has_no_expiry(state: NodeState, client: redis.Redis) -> None:
    state.set_last_job_at()
    assert client.pttl(state.key("last_job_at")) == -1


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_767_225_600.0, "2026-01-01T00:00:00.000Z"),
        (1_767_225_600.9999, "2026-01-01T00:00:00.999Z"),  # truncated, never rounded into the next second
        (1_767_225_600.5, "2026-01-01T00:00:00.500Z"),
    ],
)
def test_utc_iso_is_the_clouds_format(ts: float, text: str) -> None:
    assert utc_iso(ts) == text


def test_utc_iso_defaults_to_now(clock: Clock) -> None:
    assert utc_iso() == "2027-01-15T08:00:00.125Z"


# -- the cloud's Redis --


def test_cloud_redis_health_is_false_until_set_and_follows_the_last_value(state: NodeState) -> None:
    assert state.cloud_redis_healthy() is False
    state.set_cloud_redis(True, 90)
    assert state.cloud_redis_healthy() is True
    state.set_cloud_redis(False, 90)
    assert state.cloud_redis_healthy() is False


def test_cloud_redis_health_expires_so_a_dead_bridge_reads_unhealthy(
    state: NodeState, client: redis.Redis, clock: Clock
) -> None:
    # given a healthy mark with a 90 s life
    state.set_cloud_redis(True, 90)
    assert client.pttl(state.key("cloud_redis")) == 90_000

    # when nothing refreshes it for 90 s
    clock.advance(89.9)
    assert state.cloud_redis_healthy() is True
    clock.advance(0.2)

    # then it reads unhealthy
    assert state.cloud_redis_healthy() is False


def test_a_fractional_ttl_is_kept_in_milliseconds(state: NodeState, client: redis.Redis) -> None:
    state.set_cloud_redis(True, 2.5)
    assert client.pttl(state.key("cloud_redis")) == 2500


# -- the last stream read --


def test_stream_read_round_trips_the_exact_time(state: NodeState, client: redis.Redis) -> None:
    assert state.last_stream_read() is None
    state.stream_read()
    assert state.last_stream_read() == T0
    state.stream_read(1_800_000_123.456789)
    assert state.last_stream_read() == 1_800_000_123.456789
    assert client.pttl(state.key("stream_read_at")) == -1  # /ready judges its age, not its presence


# -- VPN --


def test_vpn_state_is_booting_until_a_check_stores_one(state: NodeState) -> None:
    assert state.vpn_state() == "booting"


def test_set_vpn_state_returns_the_previous_state(state: NodeState) -> None:
    assert state.set_vpn_state("ready", 30) is None
    assert state.set_vpn_state("degraded", 30, "probe timed out") == "ready"
    assert state.set_vpn_state("degraded", 30) == "degraded"
    assert state.vpn_state() == "degraded"


def test_vpn_state_and_detail_share_one_expiry(state: NodeState, client: redis.Redis, clock: Clock) -> None:
    # given a state stored for 25 s with a detail
    state.set_vpn_state("vpn_unavailable", 25, "no tun interface")
    detail = client.get(state.key("vpn_detail"))
    assert detail in (b"no tun interface", "no tun interface")
    assert client.pttl(state.key("vpn_state")) == 25_000
    assert client.pttl(state.key("vpn_detail")) == 25_000

    # when the checker dies and 25 s pass
    clock.advance(25.1)

    # then the state reads as booting again and the detail is gone
    assert state.vpn_state() == "booting"
    assert client.exists(state.key("vpn_detail")) == 0


def test_a_state_without_detail_clears_the_old_detail(state: NodeState, client: redis.Redis) -> None:
    state.set_vpn_state("degraded", 30, "probe timed out")
    state.set_vpn_state("ready", 30)
    assert client.get(state.key("vpn_detail")) in (b"", "")


# -- executor, connectivity, heartbeat --


def test_executor_batch_defaults_to_false_and_round_trips(state: NodeState) -> None:
    assert state.executor_batch() is False
    state.set_executor_batch(True)
    assert state.executor_batch() is True
    state.set_executor_batch(False)
    assert state.executor_batch() is False


def test_connectivity_round_trips_as_lists_and_none_clears_it(state: NodeState, client: redis.Redis) -> None:
    assert state.connectivity() is None
    state.set_connectivity([(0, 1), (1, 2)])
    assert state.connectivity() == [[0, 1], [1, 2]]
    state.set_connectivity([])
    assert state.connectivity() == []  # known to have no edges is not unknown
    state.set_connectivity(None)
    assert state.connectivity() is None
    assert client.exists(state.key("connectivity")) == 0


def test_last_heartbeat_accepted_round_trips(state: NodeState, clock: Clock) -> None:
    assert state.last_heartbeat_accepted() is None
    state.heartbeat_accepted()
    assert state.last_heartbeat_accepted() == T0
    state.heartbeat_accepted(1_900_000_000.5)
    assert state.last_heartbeat_accepted() == 1_900_000_000.5


# -- counters --


def test_counters_list_every_known_counter_at_zero_before_any_count(state: NodeState) -> None:
    assert state.counters() == dict.fromkeys(COUNTERS, 0.0)


def test_integer_and_float_counts_add_up(state: NodeState, client: redis.Redis) -> None:
    # when counters are bumped by whole and fractional amounts
    state.count("jobs_completed")
    state.count("jobs_completed")
    state.count("webhook_attempts", 5)
    state.count("executor_seconds", 1.25)
    state.count("executor_seconds", 0.5)

    # then each reads its sum, the rest stay at zero
    counters = state.counters()
    assert counters["jobs_completed"] == 2.0
    assert counters["webhook_attempts"] == 5.0
    assert counters["executor_seconds"] == pytest.approx(1.75)
    assert counters["jobs_failed"] == 0.0
    assert set(counters) == set(COUNTERS)
    assert client.hget(state.key("counters"), "jobs_completed") in (b"2", "2")  # HINCRBY, not a float


def test_a_counter_outside_the_known_list_is_still_reported(state: NodeState) -> None:
    state.count("bridge_restarts")
    assert state.counters()["bridge_restarts"] == 1.0
