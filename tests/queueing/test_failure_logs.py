"""A failing message is logged once, cut; its retries one line each: the log stays small."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from pipeline_support import FAST_LIMITS, circuit, stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.queueing.failure_logs import (
    CONSUMER_LOGGER,
    MESSAGE_SHOWN_CHARS,
    WORKER_LOGGER,
    ShortMessages,
    SmallFailureLogs,
)
from coda_bridge.queueing.queues import EXECUTE_ACTOR, JOBS_QUEUE
from coda_bridge.queueing.refusal import RefusalNotice

PAD = "x" * 1_000_000


def _failure_record(retries: int) -> logging.LogRecord:
    message = dramatiq.Message(
        queue_name=JOBS_QUEUE,
        actor_name=EXECUTE_ACTOR,
        args=({"job_id": "j-1", "ir_json": PAD}, "1-0"),
        kwargs={},
        options={"retries": retries} if retries else {},
    )
    try:
        raise ConnectionError("cloud Redis away")
    except ConnectionError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "dramatiq.worker.WorkerThread",
        logging.ERROR,
        __file__,
        1,
        "Failed to process message %s with unhandled exception.",
        (message,),
        exc_info,
    )


def test_a_first_failure_shows_the_message_cut_with_its_traceback() -> None:
    record = _failure_record(retries=0)

    ShortMessages().filter(record)

    text = logging.Formatter().format(record)
    assert "execute_job" not in text and "execute(" in text and "j-1" in text
    assert len(record.getMessage()) < MESSAGE_SHOWN_CHARS + 200
    assert "Traceback" in text and len(text) < 4000


def test_a_retry_fails_in_one_line_without_the_message() -> None:
    record = _failure_record(retries=2)

    ShortMessages().filter(record)

    text = logging.Formatter().format(record)
    assert "\n" not in text and "xxxx" not in text
    assert "(retry 2): ConnectionError: cloud Redis away" in text


@pytest.mark.e2e
def test_a_1_mb_job_failing_and_retrying_adds_a_few_kb_to_the_log(tmp_path: Path) -> None:
    with LocalStack(tmp_path, env=stack_env(tmp_path, **FAST_LIMITS)) as stack:
        # Given a valid job with a 1 MB field, queued while the jobs worker is down
        stack.children["jobs"].stop()
        job_id = stack.cloud.submit(stack.qpu_id, {**circuit(), "pad": PAD}, 10, validate=False)
        broker = stack.broker_redis.client()
        wait_until(lambda: broker.llen(f"coda-bridge:{stack.qpu_id}:dq:{JOBS_QUEUE}"), 30, "the job queued")
        # and a cloud Redis that is away, so each attempt fails and is retried
        stack.cloud_redis.stop()
        log = stack.workdir / "jobs.log"
        stack.start_process("jobs")
        wait_until(lambda: b"Worker process is ready" in log.read_bytes(), 30, "the jobs worker to boot")
        before = log.stat().st_size

        # When the job fails three times
        wait_until(lambda: log.read_bytes().count(b"Retrying message") >= 3, 60, "three retries")
        grown = log.stat().st_size - before
        stack.cloud_redis.start()

        # Then the log grew by a few kB, never by the message
        assert grown < 12_000, log.read_text(errors="replace")[-3000:]
        assert PAD[:1000] not in log.read_text(errors="replace")
        assert stack.cloud.wait_for_result(job_id, timeout_sec=60)["status"] == "completed"


def test_the_broker_booted_last_in_a_process_decides_what_is_news_on_every_logger() -> None:
    # given a worker booted on one broker, then another (each broker has its own refusal notice)
    first, second = RefusalNotice(), RefusalNotice()
    broker = StubBroker()
    broker.declare_queue("results")
    SmallFailureLogs(first).before_worker_boot(broker, None)  # type: ignore[arg-type]
    SmallFailureLogs(second).before_worker_boot(broker, None)  # type: ignore[arg-type]

    # then the worker's and the consumers' loggers share the last one's notice: an outage is one line
    for name in (WORKER_LOGGER, CONSUMER_LOGGER % "results"):
        filters = [f for f in logging.getLogger(name).filters if isinstance(f, ShortMessages)]
        assert [f.notice for f in filters] == [second], name
