"""``coda-bridge job``: one line and the documented exit code for every way it cannot show a timeline."""

from __future__ import annotations

import json
import re

import pytest
import redis

from coda_bridge.cli.job import describe
from coda_bridge.cli.main import main
from coda_bridge.devtools.localredis import free_port
from coda_bridge.pipeline.timeline import JOB_ID_MAX_CHARS, Timeline

QPU = "qpu-job-cli"


@pytest.fixture
def node_env(clean_env: pytest.MonkeyPatch, redis_url: str) -> pytest.MonkeyPatch:
    clean_env.setenv("CODA_QPU_ID", QPU)
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    return clean_env


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_a_recorded_job_shows_in_words_and_in_stable_json(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    # Given a job the node read, ran and delivered
    timeline = Timeline(redis.Redis.from_url(redis_url), QPU, retention_sec=3600)
    timeline.write(
        [
            timeline.event("j-1", "received", entry="1700000000000-0"),
            timeline.event("j-1", "started", executor="qubic:create_executor"),
            timeline.event("j-1", "delivery", attempt=1, outcome="accepted", status=200, took_sec=0.05),
        ]
    )

    # When it is asked for twice in JSON, and once in words
    first = run_main(capsys, "job", "j-1", "--json")
    second = run_main(capsys, "job", "j-1", "--json")
    code, out, _ = run_main(capsys, "job", "j-1")

    # Then the JSON is the same document both times, with sorted keys
    assert first[0] == 0 and first[1] == second[1]
    document = json.loads(first[1])
    assert list(document) == ["events", "expires_in_sec", "job_id", "qpu_id"]
    assert [event["event"] for event in document["events"]] == ["received", "started", "delivery"]
    assert 0 < document["expires_in_sec"] <= 3600
    # and the words give one line per event
    assert code == 0
    lines = out.splitlines()
    header = rf"Job j-1 on QPU {QPU} \(3 events, kept 3[56]\d\d more seconds\)"
    assert re.fullmatch(header, lines[0]), lines[0]
    assert "read from the cloud's stream (entry 1700000000000-0)" in lines[1]
    assert "run 1 started on qubic:create_executor" in lines[2]
    assert "webhook attempt 1: accepted (HTTP 200 after 0.05 s)" in lines[3]


def test_an_unknown_job_is_one_line_and_exit_1(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "job", "never-seen")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: no timeline for job never-seen on QPU qpu-job-cli")


@pytest.mark.parametrize(
    ("job_id", "said"),
    [
        ("j" * (JOB_ID_MAX_CHARS * 40), "job ids have at most 256"),
        ("j-1\x1b]0;owned\x07", "holds control characters"),
        ("", "the job id is empty"),
    ],
)
def test_an_id_that_cannot_be_a_job_is_refused_before_the_broker_is_asked(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], job_id: str, said: str
) -> None:
    # Given a broker that does not answer (so nothing may reach it)
    node_env.setenv("CODA_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")

    # When the id is huge, holds terminal escapes, or is empty
    code, out, err = run_main(capsys, "job", job_id)

    # Then it is a usage error naming what is wrong, without echoing the escapes or the whole id
    assert code == 2 and out == "" and said in err
    assert "\x1b" not in err and len(err) < 1000 and "Traceback" not in err


def test_the_broker_down_is_one_line_naming_it_without_its_password(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node_env.setenv("CODA_BROKER_URL", f"redis://:s3cr3t@127.0.0.1:{free_port()}/0")
    code, _, err = run_main(capsys, "job", "j-1")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: the broker at redis://127.0.0.1")
    assert "s3cr3t" not in err


def test_each_kind_of_event_reads_as_one_line_in_words() -> None:
    # Given the events of a job that had a hard life, as the steps write them
    def at(second: float, kind: str, **fields: object) -> dict[str, object]:
        return {"at": 1_800_000_000 + second, "event": kind, "host": "lab-1", "pid": 42, **fields}

    events = [
        at(0, "received", entry="1-0"),
        at(0.1, "queued", entry="1-0", batch=3),
        at(1, "started", executor="qubic", version="2.4.1", device="idle", batch=3),
        at(2, "crashed", reason="the executor's process died with signal 11 (SIGSEGV)"),
        at(2, "started", executor="qubic", rerun="after a crash"),
        at(3, "finished", outcome="completed"),
        at(3, "recorded", outcome="completed", bytes=120),
        at(
            4,
            "delivery",
            attempt=1,
            outcome="retry",
            reason="webhook to https://cloud/cb failed: ConnectTimeout",
        ),
        at(5, "dead_lettered", attempts=4),
        at(6, "replayed", queue="results"),
        at(7, "delivery", attempt=1, outcome="accepted", status=200, took_sec=0.01),
        at(7, "acknowledged", outcome="completed"),
        at(8, "from_a_newer_node", detail="kept"),
    ]

    # When they are described
    lines = describe(events)

    # Then each is one line: UTC time with milliseconds, the event, what happened, where
    assert len(lines) == len(events)
    assert lines[0] == (
        "  2027-01-15 08:00:00.000Z  received       read from the cloud's stream (entry 1-0)  [lab-1 pid 42]"
    )
    assert "forwarded into the jobs queue, in a batch of 3" in lines[1]
    assert "run 1 started on qubic 2.4.1, device idle" in lines[2]
    assert "run 1 lost: the executor's process died with signal 11 (SIGSEGV)" in lines[3]
    assert "run 2 started on qubic, again after a crash" in lines[4]
    assert "run 2 ended completed" in lines[5] and "result recorded: completed, 120 bytes" in lines[6]
    assert "webhook attempt 1: retry (no answer): webhook to https://cloud/cb failed" in lines[7]
    assert "gave up after 4 attempts; `coda-bridge replay` sends it again" in lines[8]
    assert "queued again by `coda-bridge replay`" in lines[9]
    assert "outcome at the cloud (completed), stream entry acknowledged" in lines[11]
    assert '{"detail": "kept"}' in lines[12]  # an event this version does not know is shown, not dropped
