"""Pause, resume and device state through real processes: devcloud, bridge, jobs workers, probes app.

The test executor stamps every run's start and end (with its pid), so a test
can tell which job started when, and in which worker process.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pipeline_support import circuit, stack_env
from prometheus_client.parser import text_string_to_metric_families

from coda_bridge.control.pause_book import PauseBook
from coda_bridge.device import DeviceState
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.state.broker_keys import timeline_key

pytestmark = pytest.mark.e2e

HEARTBEAT_SEC = 1.0
#: A run that passed the worker's check an instant before the pause may start just after it.
START_GRACE_SEC = 1.0
#: Each job of the load runs this long.
JOB_SEC = 0.3
#: The operator's pause under load: long enough for every check made while it holds (two CLI runs,
#: probes, scrapes: they took 15.3 s with a CPU hog beside 3 test processes; 5 s were too short).
PAUSE_SEC = 30
#: Once the checks are done, the operator shortens the pause to end this long after (by itself).
REST_SEC = 3
#: The longest gap between heartbeats the cloud takes as "on time" during a pause: a busy machine
#: stalls the bridge for seconds; a pause that held heartbeats would leave a gap of PAUSE_SEC.
HEARTBEAT_GAP_SEC = 5 * HEARTBEAT_SEC


@pytest.fixture(scope="module")
def pause_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("pause-stack")
    env = stack_env(
        workdir,
        CODA_EXECUTOR_FACTORY="pause_test_executor:create_executor",
        PAUSE_TEST_EXECUTOR_LOG=str(workdir / "stamps.log"),
        PAUSE_TEST_DEVICE_STATE=str(workdir / "device-state"),
        CODA_DEVICE_POLL_INTERVAL_SEC="0.5",
        CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC="2",
        CODA_STREAM_BLOCK_MS="500",
        CODA_READY_STREAM_STALE_SEC="3",
    )
    with LocalStack(workdir, env=env, web=True) as node:
        wait_until(lambda: probes_answer(node), 60, "the probes app to answer")
        yield node


def probes_answer(stack: LocalStack) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{stack.web_port}/health", timeout=5).ok
    except requests.RequestException:
        return False


def stamps(stack: LocalStack, event: str = "start") -> list[tuple[float, int, str]]:
    """``(time, pid, tag)`` of every run start (or end) so far."""
    path = stack.workdir / "stamps.log"
    text = path.read_text() if path.exists() else ""
    lines = text[: text.rfind("\n") + 1].splitlines()  # (a line being written is read next time)
    found = []
    for line in lines:
        kind, at, pid, tag = line.split(" ", 3)
        if kind == event:
            found.append((float(at), int(pid), tag))
    return found


def book(stack: LocalStack) -> PauseBook:
    return PauseBook(stack.broker_redis.client(), stack.qpu_id)


def submit(stack: LocalStack, prefix: str, count: int) -> list[str]:
    return stack.cloud.submit_bulk(
        stack.qpu_id, count, circuit(f"sleep:{JOB_SEC}", tag=prefix), 10, job_id_prefix=f"{prefix}-"
    )


def forwarded(stack: LocalStack, ids: list[str]) -> bool:
    """Whether the bridge read every job and queued it locally (the job's timeline says ``received``)."""
    broker = stack.broker_redis.client()
    events = [broker.lrange(timeline_key(stack.qpu_id, job_id), 0, -1) for job_id in ids]
    return all(any(json.loads(item)["event"] == "received" for item in items) for items in events)


def ready(stack: LocalStack) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=10)
    return response.status_code, response.json()


def metric(stack: LocalStack, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = requests.get(f"http://127.0.0.1:{stack.web_port}/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def test_pause_under_load_lets_running_jobs_finish_starts_none_and_keeps_heartbeating(
    pause_stack: LocalStack,
) -> None:
    stack = pause_stack
    # given 30 jobs queued, some of them already run
    ids = submit(stack, "load", 30)
    wait_until(lambda: len(stamps(stack, "end")) >= 3, 60, "the first jobs to run")

    # when the operator pauses the node for a while with a note
    done = stack.command("pause", "--for", f"{PAUSE_SEC}s", "--note", "fridge check")
    assert done.returncode == 0, done.stderr
    assert "Paused qpu-local until" in done.stdout
    pause = book(stack).current()
    assert pause is not None and pause.note == "fridge check"
    assert PAUSE_SEC - 1 < pause.until - pause.since <= PAUSE_SEC
    # and more jobs arrive during the pause
    bridge_log = stack.workdir / "bridge.log"
    held = "Not reading new stream entries: the node is paused"
    wait_until(lambda: held in bridge_log.read_text(errors="replace"), 10, "the bridge to stop reading")
    late = submit(stack, "late", 5)

    # then the node is alive but not ready, and says why, with the note and the end
    code, body = ready(stack)
    assert code == 503
    assert body["paused"] is True and body["pause"]["note"] == "fridge check"
    assert body["pause"]["until"] == pause.as_dict()["until"]
    assert "paused until" in body["reason"]
    assert metric(stack, "coda_bridge_paused") == {(): 1.0}
    assert metric(stack, "coda_bridge_pause_end_timestamp_seconds") == {(): pytest.approx(pause.until)}
    assert metric(stack, "coda_bridge_pause_info") == {(("note", "fridge check"),): 1.0}
    status = stack.command("status", "--json")
    assert '"note": "fridge check"' in status.stdout, status.stdout + status.stderr
    # (the late jobs wait in the cloud's stream, unread)
    assert metric(stack, "coda_bridge_stream_lag_entries") == {(): 5.0}
    assert book(stack).current() == pause, "the checks above took longer than the pause: they prove nothing"
    # (and the operator, done checking, shortens the pause: it ends REST_SEC from now, by itself)
    until = book(stack).pause(REST_SEC, "fridge check").until

    # and after the pause every job completes, by itself
    results = stack.cloud.wait_for_results(ids + late, timeout_sec=120)
    assert len(results) == 35
    assert all(r["status"] == "completed" for r in results.values()), results

    # no job started during the pause (a run that passed its check an instant before may start just after)
    ours = (":load", ":late")
    starts = [at for at, _, tag in stamps(stack) if tag.endswith(ours)]
    during = [at - pause.since for at in starts if pause.since + START_GRACE_SEC <= at < until]
    assert during == []
    # the jobs running when it began finished (no run was cut: each start has its end)
    assert len([tag for _, _, tag in stamps(stack, "end") if tag.endswith(ours)]) == len(starts) == 35
    assert any(at >= until for at in starts)  # the rest started once it ended
    # and heartbeats went on all through it, on time
    beats = [b["received_at"] for b in stack.cloud.heartbeats(stack.qpu_id, accepted=True)]
    window = [pause.since] + [t for t in beats if pause.since <= t <= until] + [until]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    # (from the pause's start to its end: no gap that long means a beat every HEARTBEAT_GAP_SEC at least)
    assert max(gaps) < HEARTBEAT_GAP_SEC, gaps
    code, body = ready(stack)
    assert body["paused"] is False


def test_resume_ends_a_pause_early(pause_stack: LocalStack) -> None:
    stack = pause_stack
    # given a node paused for an hour, with jobs waiting
    done = stack.command("pause", "--for", "1h")
    assert done.returncode == 0, done.stderr
    ids = submit(stack, "early", 5)
    wait_until(lambda: ready(stack)[1]["paused"] is True, 10, "/ready to show the pause")
    assert not [tag for _, _, tag in stamps(stack) if tag.endswith(":early")]

    # when the operator resumes it
    done = stack.command("resume")

    # then it is no longer paused, and the jobs run
    assert done.returncode == 0 and "Resumed qpu-local." in done.stdout, done.stderr
    assert book(stack).current() is None
    results = stack.cloud.wait_for_results(ids, timeout_sec=60)
    assert all(r["status"] == "completed" for r in results.values())
    assert "was not paused" in stack.command("resume").stdout


def test_a_pause_set_through_the_broker_holds_a_second_jobs_worker(pause_stack: LocalStack) -> None:
    stack = pause_stack
    # given a second jobs worker process on the same broker (another host, say), both running jobs
    stack.start_process("jobs#2")
    try:
        ids = submit(stack, "two", 24)
        wait_until(
            lambda: len({pid for _, pid, tag in stamps(stack) if tag.endswith(":two")}) == 2,
            60,
            "both jobs workers to run jobs",
        )
        # when a pause is written to the broker from elsewhere (not through this node's CLI)
        pause = book(stack).pause(4.0, "from another host")

        # then neither worker starts a job until it ends, and then every job completes
        results = stack.cloud.wait_for_results(ids, timeout_sec=120)
        assert all(r["status"] == "completed" for r in results.values())
        two = [(at, pid) for at, pid, tag in stamps(stack) if tag.endswith(":two")]
        assert len(two) == 24
        assert [at for at, _ in two if pause.since + START_GRACE_SEC <= at < pause.until] == []
        after = {pid for at, pid in two if at >= pause.until}
        assert after, "no job was left for after the pause"
    finally:
        stack.children["jobs#2"].stop()


def test_a_device_in_calibration_holds_every_job_until_it_is_idle_again(pause_stack: LocalStack) -> None:
    stack = pause_stack
    state_file = Path(stack.env()["PAUSE_TEST_DEVICE_STATE"])
    # given jobs running
    ids = submit(stack, "calib", 20)
    wait_until(lambda: any(t.endswith(":calib") for _, _, t in stamps(stack)), 60, "the first job")

    # when the executor reports calibration for 3 s
    began = time.time()
    state_file.write_text("calibration")
    wait_until(lambda: book(stack).device_state() is DeviceState.CALIBRATION, 10, "the state recorded")
    code, body = ready(stack)
    assert code == 503 and body["device_state"] == "calibration", body
    assert body["paused"] is False and body["reason"] == "the device reports calibration"
    assert metric(stack, "coda_bridge_device_state")[(("state", "calibration"),)] == 1.0
    status = stack.command("status")
    assert "device:      calibration" in status.stdout, status.stdout + status.stderr
    wait_until(lambda: time.time() - began >= 3, 10, "3 s of calibration")  # the device's own time
    ended = time.time()
    state_file.write_text("idle")

    # then no job started meanwhile, and afterwards all complete
    results = stack.cloud.wait_for_results(ids, timeout_sec=120)
    assert all(r["status"] == "completed" for r in results.values())
    starts = [at for at, _, tag in stamps(stack) if tag.endswith(":calib")]
    assert len(starts) == 20
    assert [at - began for at in starts if began + START_GRACE_SEC <= at < ended] == []
    assert any(at >= ended for at in starts)
    assert ready(stack)[1]["device_state"] == "idle"


def test_jobs_held_by_a_pause_survive_a_jobs_worker_restart_and_each_runs_once(
    pause_stack: LocalStack,
) -> None:
    stack = pause_stack
    log = stack.workdir / "jobs.log"  # (appended to by every test of the module: count, not find)
    held, skipped = "Jobs held: the node is paused", "was skipped"  # dramatiq's line for a message put back

    def count(line: str) -> int:
        return log.read_text(errors="replace").count(line)

    # given jobs in the local queue, held by a pause (the worker holds one)
    ids = submit(stack, "restart", 10)
    # (a bridge blocked on the stream may read the first entry alone, and the pause stop it reading more)
    wait_until(lambda: forwarded(stack, ids), 60, "the bridge to queue every job")
    wait_until(lambda: any(t.endswith(":restart") for _, _, t in stamps(stack)), 60, "the first job")
    held_before = count(held)
    book(stack).pause(3600, "restart test")
    wait_until(lambda: len(stamps(stack, "end")) == len(stamps(stack)), 30, "the running job to end")
    wait_until(lambda: count(held) > held_before, 30, "the worker to hold a job")

    # when the jobs worker stops (and puts back what it held) and starts again, still paused
    skipped_before = count(skipped)
    stack.children["jobs"].stop()
    skipped_at_stop, held_at_stop = count(skipped), count(held)
    stack.start_process("jobs")
    assert book(stack).current() is not None
    wait_until(lambda: count(held) > held_at_stop, 30, "the restarted worker to hold a job")
    book(stack).resume()

    # then the stopped worker put back what it held, every job completes, and none ran twice
    assert skipped_at_stop > skipped_before
    results = stack.cloud.wait_for_results(ids, timeout_sec=120)
    assert all(r["status"] == "completed" for r in results.values())
    tags = [tag for _, _, tag in stamps(stack) if tag.endswith(":restart")]
    assert len(tags) == 10
    assert all(len(stack.cloud.webhooks(job_id, accepted=True)) == 1 for job_id in ids)
