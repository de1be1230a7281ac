"""The executor actor's work on a real Redis: a batch takes each step together, and every job its outcome."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from pipeline_support import circuit

from coda_bridge.cloud.redis_keys import cancel_key, status_key
from coda_bridge.components import NodeComponents
from coda_bridge.pipeline.execute import Delivery, JobOutcome, execute_batch, execute_job
from coda_bridge.settings import load_settings
from coda_bridge.state.broker_keys import claim_key, job_key

QPU = "qpu-jobs-test"
CALLBACK = "https://coda.conductorquantum.com/api/internal/qpu/webhook"
#: Lease another worker holds on the busy job.
OTHER_LEASE_MS = 10_000


@pytest.fixture
def rt(clean_env: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Iterator[NodeComponents]:
    clean_env.setenv("PIPELINE_TEST_EXECUTOR_LOG", str(tmp_path / "executor.log"))
    settings = load_settings(
        overrides={
            "qpu_id": QPU,
            "redis_url": redis_url,
            "broker_url": redis_url,
            "executor_factory": "coda_test_executor:create_batch_executor",
            "cancel_poll_interval_sec": 1.0,
        }
    )
    parts = NodeComponents(settings)
    yield parts
    parts.close()


class Recorder:
    """The actor's callbacks; given ``local``, each enqueue checks its results were recorded first."""

    def __init__(self, local: redis.Redis | None) -> None:
        self.local = local
        self.calls: list[list[Delivery]] = []
        self.later: list[tuple[str, float]] = []

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        for job_id, _, _ in deliveries if self.local is not None else ():
            assert self.local.hexists(job_key(QPU, job_id), "result"), f"{job_id} queued before recorded"
        self.calls.append(list(deliveries))

    def look_later(self, fields: Mapping[str, str], entry_id: str, delay_sec: float) -> None:
        self.later.append((fields["job_id"], delay_sec))

    def delivered(self) -> list[str]:
        return sorted(job_id for call in self.calls for job_id, _, _ in call)


def _entry(job_id: str, mode: str = "ok", **fields: str) -> tuple[dict[str, str], str]:
    base = {
        "job_id": job_id,
        "callback_url": CALLBACK,
        "ir_json": json.dumps(circuit(mode, tag=job_id)),
        "shots": "10",
    }
    return {**base, **fields}, f"{uuid.uuid4().int % 10**12}-0"


def _runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "executor.log"
    return path.read_text().splitlines() if path.exists() else []


def _result(rt: NodeComponents, job_id: str) -> dict[str, Any]:
    raw = rt.local_redis.hget(job_key(QPU, job_id), "result")
    assert raw is not None, job_id
    return dict(json.loads(raw))


def _by_job(outcomes: list[JobOutcome]) -> dict[str | None, tuple[str, str]]:
    assert len({o.job_id for o in outcomes}) == len(outcomes)
    return {o.job_id: (o.outcome, o.detail) for o in outcomes}


def test_a_mixed_batch_gives_each_job_its_outcome_and_delivers_each_result_once(
    rt: NodeComponents, tmp_path: Path
) -> None:
    cloud, local = rt.cloud_redis, rt.local_redis
    cloud.hset(status_key("done"), "state", "completed")
    cloud.set(cancel_key("cancelled"), "1")
    recorded = {"job_id": "recorded", "status": "completed", "counts": {"00": 3}}
    local.hset(job_key(QPU, "recorded"), "result", json.dumps(recorded))
    local.set(claim_key(QPU, "busy"), "another-worker", px=OTHER_LEASE_MS)
    entries = [
        _entry("good-1"),
        _entry("done"),
        _entry("cancelled"),
        _entry("recorded"),
        _entry("busy"),
        _entry("good-2"),
        _entry("bad-shots", shots="abc"),
        _entry("offhost", callback_url="http://203.0.113.9/cb"),
        ({"job_id": "nocallback", "ir_json": "{}", "shots": "1"}, "1-0"),
        _entry("good-3"),
    ]
    calls = Recorder(local)
    running: list[tuple[Mapping[str, str], str]] = []

    outcomes = execute_batch(rt.execution, entries, calls.enqueue, calls.look_later, running)

    found = _by_job(outcomes)
    assert found.pop("offhost")[0] == "skipped"
    assert found == {
        "good-1": ("queued", "completed"),
        "good-2": ("queued", "completed"),
        "good-3": ("queued", "completed"),
        "done": ("skipped", "already completed"),
        "cancelled": ("cancelled", "before start"),
        "recorded": ("queued", "recorded earlier"),
        "bad-shots": ("queued", "failed"),
        "nocallback": ("skipped", "no callback_url"),
    }
    assert calls.delivered() == ["bad-shots", "good-1", "good-2", "good-3", "recorded"]
    assert len(calls.calls) == 2  # the early failures and the recorded result, then the run's results
    assert [job_id for job_id, _ in calls.later] == ["busy"]
    assert OTHER_LEASE_MS / 1000 - 1 < calls.later[0][1] <= OTHER_LEASE_MS / 1000 + 0.5
    assert sorted(fields["job_id"] for fields, _ in running) == ["good-1", "good-2", "good-3"]

    assert [line for line in _runs(tmp_path) if line.startswith("batch")] == ["batch 3"]
    assert sorted(line.rsplit(":", 1)[1] for line in _runs(tmp_path) if line.startswith("run")) == [
        "good-1",
        "good-2",
        "good-3",
    ]
    assert _result(rt, "good-2") == {
        "job_id": "good-2",
        "status": "completed",
        "counts": {"00": 10},
        "execution_time_ms": 1.0,
        "shots_completed": 10,
    }
    assert _result(rt, "recorded") == recorded
    assert "shots must be an integer" in _result(rt, "bad-shots")["error"]

    assert cloud.hget(status_key("good-3"), "state") == "executing"
    assert set(cloud.hgetall(status_key("good-3"))) == {"state", "started_at", "message_id", "qpu_id"}
    assert cloud.hget(status_key("cancelled"), "state") == "cancelled"
    assert "not the cloud's host" in str(cloud.hget(status_key("offhost"), "error"))
    assert local.get(claim_key(QPU, "busy")) == b"another-worker"
    assert local.keys(f"coda-bridge:{QPU}:claim:*") == [claim_key(QPU, "busy").encode()]
    assert rt.state.current_jobs() == []


def test_a_cancel_key_with_a_recorded_result_delivers_that_result(rt: NodeComponents, tmp_path: Path) -> None:
    rt.cloud_redis.set(cancel_key("late-cancel"), "1")
    recorded = {"job_id": "late-cancel", "status": "completed", "counts": {"00": 10}}
    rt.local_redis.hset(job_key(QPU, "late-cancel"), "result", json.dumps(recorded))
    calls = Recorder(rt.local_redis)

    outcomes = execute_batch(
        rt.execution, [_entry("late-cancel"), _entry("other")], calls.enqueue, calls.look_later
    )

    assert _by_job(outcomes)["late-cancel"] == ("queued", "recorded earlier")
    assert calls.delivered() == ["late-cancel", "other"]
    assert not [line for line in _runs(tmp_path) if line.endswith(":late-cancel")]


def _round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts this thread's Redis round trips: one per pipeline, one per command outside a pipeline.

    Only the calling thread counts: a thread another test left running (a registration's refresh)
    is not the step under test.
    """
    trips: list[str] = []
    pipeline_execute = redis.client.Pipeline.execute
    command = redis.Redis.execute_command
    counting = threading.current_thread()

    def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is counting:
            trips.append("pipeline")
        return pipeline_execute(self, *args, **kwargs)

    def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self, redis.client.Pipeline) and threading.current_thread() is counting:
            trips.append(str(args[0]))
        return command(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counted_execute)
    monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
    return trips


@pytest.mark.parametrize("size", [2, 10])
def test_a_batch_takes_the_same_round_trips_whatever_its_size(
    rt: NodeComponents, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    calls = Recorder(None)
    rt.host.executor()  # resolved before counting, as a worker does at boot
    trips = _round_trips(monkeypatch)

    outcomes = execute_batch(
        rt.execution, [_entry(f"job-{i}") for i in range(size)], calls.enqueue, calls.look_later
    )

    assert {o.outcome for o in outcomes} == {"queued"}
    assert len(calls.calls) == 1
    # precheck, claim, running mark, executing, executor time, record, release
    assert len(trips) == 7, trips


def test_one_job_alone_runs_and_is_delivered(rt: NodeComponents, tmp_path: Path) -> None:
    calls = Recorder(rt.local_redis)
    fields, entry_id = _entry("single")

    outcome = execute_job(rt.execution, fields, entry_id, calls.enqueue, calls.look_later)

    assert outcome == JobOutcome("single", "queued", "completed")
    assert calls.calls == [[("single", CALLBACK, entry_id)]]
    assert [line for line in _runs(tmp_path) if line.startswith("batch")] == []
    assert _result(rt, "single")["status"] == "completed"


def test_one_job_claimed_elsewhere_is_sent_later_with_the_lease_left(
    rt: NodeComponents, tmp_path: Path
) -> None:
    rt.local_redis.set(claim_key(QPU, "taken"), "another-worker", px=OTHER_LEASE_MS)
    calls = Recorder(rt.local_redis)

    outcome = execute_job(rt.execution, *_entry("taken"), calls.enqueue, calls.look_later)

    assert outcome.outcome == "later"
    [(job_id, delay_sec)] = calls.later
    assert job_id == "taken"
    assert OTHER_LEASE_MS / 1000 - 1 < delay_sec <= OTHER_LEASE_MS / 1000 + 0.5
    assert calls.calls == []
    assert _runs(tmp_path) == []
    assert rt.local_redis.get(claim_key(QPU, "taken")) == b"another-worker"


#: Field values nobody meant to send; each must end as its own job's ``failed`` result, naming the field.
HOSTILE_SHOTS = {
    "superscript-two": "\u00b2",  # str.isdigit() says yes, int() says no
    "arabic-indic": "\u0661\u0662",  # int() takes it, the protocol does not
    "fullwidth": "\uff15",
    "underscore": "1_000",
    "plus-sign": "+5",
    "hex": "0x10",
    "too-many-digits": "9" * 13,
    "nul": "5\x00",
    "empty": "",
}


def test_hostile_shots_fail_their_own_job_and_the_rest_of_the_batch_runs(
    rt: NodeComponents, tmp_path: Path
) -> None:
    # Given a batch where good jobs travel with one job per hostile shots value
    entries = [_entry("good-a")]
    entries += [_entry(f"shots-{name}", shots=value) for name, value in HOSTILE_SHOTS.items()]
    entries += [_entry("good-b")]
    calls = Recorder(rt.local_redis)

    # When the batch is executed
    outcomes = _by_job(execute_batch(rt.execution, entries, calls.enqueue, calls.look_later))

    # Then every job has a result; the good ones ran, each hostile one failed naming shots
    assert set(outcomes) == {fields["job_id"] for fields, _ in entries}
    assert _result(rt, "good-a")["status"] == "completed"
    assert _result(rt, "good-b")["status"] == "completed"
    for name in HOSTILE_SHOTS:
        result = _result(rt, f"shots-{name}")
        assert result["status"] == "failed", name
        assert "shots must be an integer" in result["error"], (name, result["error"])


def test_an_ir_nobody_meant_to_send_fails_that_job_only(
    rt: NodeComponents, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an IR nested deeper than any parser expects, and a 2 MB one, between good jobs
    deep = "[" * 100_000 + "]" * 100_000
    huge = json.dumps({"version": "1.0", "junk": "x" * 2_000_000})
    entries = [_entry("good-a"), _entry("deep", ir_json=deep), _entry("huge", ir_json=huge), _entry("good-b")]
    calls = Recorder(rt.local_redis)

    outcomes = _by_job(execute_batch(rt.execution, entries, calls.enqueue, calls.look_later))

    # Then both end as failed results, the others completed, and no log line quotes a whole field
    assert set(outcomes) == {"good-a", "deep", "huge", "good-b"}
    assert _result(rt, "deep")["status"] == "failed"
    assert _result(rt, "huge")["status"] == "failed"
    assert _result(rt, "good-a")["status"] == "completed" and _result(rt, "good-b")["status"] == "completed"
    assert max((len(record.getMessage()) for record in caplog.records), default=0) < 5_000
    assert all(len(_result(rt, job)["error"]) <= 500 for job in ("deep", "huge"))


def test_an_unexpected_error_while_checking_a_job_fails_that_job_not_the_batch(
    rt: NodeComponents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a check that breaks in a way nobody planned for, on one job of a batch
    from coda_bridge.pipeline import execute

    real = execute.validate_job

    def flaky(settings: Any, fields: Mapping[str, str]) -> Any:
        if fields["job_id"] == "breaks":
            raise ValueError("invalid literal for int() with base 10: '\u00b2'")
        return real(settings, fields)

    monkeypatch.setattr(execute, "validate_job", flaky)
    calls = Recorder(rt.local_redis)

    outcomes = _by_job(
        execute_batch(
            rt.execution, [_entry("ok-1"), _entry("breaks"), _entry("ok-2")], calls.enqueue, calls.look_later
        )
    )

    # Then that job fails naming the error, and the others complete
    assert set(outcomes) == {"ok-1", "breaks", "ok-2"}
    assert _result(rt, "breaks")["status"] == "failed"
    assert "Job could not be checked: ValueError" in _result(rt, "breaks")["error"]
    assert _result(rt, "ok-1")["status"] == "completed" and _result(rt, "ok-2")["status"] == "completed"


def test_a_broker_refusing_the_running_mark_as_the_run_starts_costs_the_mark_not_the_run_or_its_slot(
    rt: NodeComponents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that refuses the running mark written once the device has the job
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("broker gone")

    monkeypatch.setattr(rt.execution.state, "jobs_started", refuse)
    calls = Recorder(rt.local_redis)

    # When the job runs
    outcome = execute_job(rt.execution, *_entry("marked"), calls.enqueue, calls.look_later)

    # Then it ran once and its result was recorded and queued
    assert (outcome.outcome, outcome.detail) == ("queued", "completed")
    assert _runs(tmp_path) == ["run ok:marked"]
    assert calls.delivered() == ["marked"]
    # and the device's slot is free for the next job
    slots = rt.execution.host.processes.slots
    assert slots.acquire(timeout=1.0)
    slots.release()
