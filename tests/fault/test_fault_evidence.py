"""A failed fault run keeps its evidence: the node's logs outside pytest's temporary directories, and what
failed its dead letters, counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis
from dramatiq.message import Message
from fault_support import EVIDENCE_DIR_ENV, dead_letter_kinds, keep_evidence

from coda_bridge.state.broker_keys import dead_messages_key

NAMESPACE = "qpu-evidence-test"


def test_a_failed_run_keeps_its_logs_and_shows_their_last_lines_but_never_the_node_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a run's work directory with two process logs and the node's state (its private key)
    workdir = tmp_path / "run"
    (workdir / "state").mkdir(parents=True)
    (workdir / "jobs.log").write_text("".join(f"jobs line {n}\n" for n in range(100)))
    (workdir / "bridge.log").write_text("Bridge reading\n")
    (workdir / "state" / "coda-private-key").write_text("-----BEGIN PRIVATE KEY----- not-for-logs")
    monkeypatch.setenv(EVIDENCE_DIR_ENV, str(tmp_path / "kept"))

    # when
    shown = keep_evidence(workdir, "test_kills[procfile]")

    # then: the logs are copied under a file-system-safe name, and their tails shown
    [kept] = (tmp_path / "kept").iterdir()
    assert kept.name.startswith("test_kills-procfile-")
    assert sorted(path.name for path in kept.iterdir()) == ["bridge.log", "jobs.log"]
    assert (kept / "jobs.log").read_text() == (workdir / "jobs.log").read_text()
    assert f"node logs kept in {kept}" in shown
    assert "Bridge reading" in shown
    assert "jobs line 99" in shown and "jobs line 60" in shown and "jobs line 59" not in shown
    assert "not-for-logs" not in shown


def test_dead_letters_are_counted_by_queue_actor_and_the_last_line_of_their_error(redis_url: str) -> None:
    # given: dead letters as dramatiq leaves them (the message, its traceback in its options)
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def dead(queue: str, actor: str, traceback: str | None) -> None:
        options = {"traceback": traceback} if traceback else {}
        message = Message(queue_name=queue, actor_name=actor, args=(), kwargs={}, options=options)
        client.hset(dead_messages_key(NAMESPACE, queue), message.message_id, message.encode())

    for _ in range(2):
        dead("jobs", "execute", 'Traceback:\n  File "x.py"\nRuntimeError: the node is not booted\n')
    dead("results", "deliver", "Traceback:\nWebhookError: refused with 401\n")
    dead("jobs", "execute", None)

    # when
    kinds = dead_letter_kinds(client, NAMESPACE)

    # then
    assert kinds == Counter(
        {
            "jobs/execute: RuntimeError: the node is not booted": 2,
            "results/deliver: WebhookError: refused with 401": 1,
            "jobs/execute: no traceback": 1,
        }
    )
    client.close()
