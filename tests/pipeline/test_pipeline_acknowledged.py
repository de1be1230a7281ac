"""Every way a job ends leaves its stream entry acknowledged, through real processes.

The terminal state and the entry's acknowledgement are written together,
so the moment the cloud sees the job over, nothing of it is pending in the
consumer group (read in one transaction, so no later pass can tidy up in
between).  A skip writes no state: its entry is acknowledged all the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis
from pipeline_support import circuit

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.state.node_state import NodeState

pytestmark = pytest.mark.e2e

#: Longest a job may take to end on a busy machine.
END_TIMEOUT_SEC = 30.0
TERMINAL = ("completed", "failed", "cancelled")


def _entry_id(stack: LocalStack, job_id: str) -> str:
    """The stream entry the simulator added for ``job_id``."""
    client = stack.cloud_redis.client()
    for entry_id, fields in client.xrange(f"qpu:{stack.qpu_id}:jobs"):
        if fields.get(b"job_id", fields.get("job_id")) in (job_id, job_id.encode()):
            return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    raise AssertionError(f"no stream entry for job {job_id}")


def _state_and_pending(stack: LocalStack, job_id: str) -> tuple[str | None, int]:
    """The job's state at the cloud and whether its entry is pending, read in one transaction."""
    entry_id = _entry_id(stack, job_id)
    pipe = stack.cloud_redis.client().pipeline(transaction=True)
    pipe.hget(f"qpu:job:{job_id}:status", "state")
    pipe.xpending_range(f"qpu:{stack.qpu_id}:jobs", f"qpu:{stack.qpu_id}:workers", entry_id, entry_id, 1)
    state, pending = pipe.execute(raise_on_error=False)
    if isinstance(pending, redis.ResponseError):  # NOGROUP: the bridge has read nothing yet
        return None, 1
    return (state.decode() if isinstance(state, bytes) else state), len(pending)


def _ended(stack: LocalStack, job_id: str) -> tuple[str, int]:
    """Wait for the job's terminal state; that state and its entry's pending count at that moment."""

    def terminal() -> tuple[str, int] | None:
        state, pending = _state_and_pending(stack, job_id)
        return (state, pending) if state in TERMINAL else None

    ended: tuple[str, int] = wait_until(terminal, END_TIMEOUT_SEC, f"job {job_id} to end")
    return ended


def _completed(stack: LocalStack) -> str:
    return stack.cloud.submit(stack.qpu_id, circuit("ok"), 10)


def _failed(stack: LocalStack) -> str:
    return stack.cloud.submit(stack.qpu_id, circuit("raise"), 10)


def _cancelled_before_start(stack: LocalStack) -> str:
    blocker = stack.cloud.submit(stack.qpu_id, circuit("sleep:1.5"), 10)
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok", tag="never-run"), 10)
    stack.cloud.cancel(job_id)
    stack.cloud.wait_for_results([blocker], timeout_sec=END_TIMEOUT_SEC)
    return job_id


def _cancelled_while_running(stack: LocalStack) -> str:
    job_id = stack.cloud.submit(stack.qpu_id, circuit("sleep:20"), 10)
    wait_until(lambda: _state_and_pending(stack, job_id)[0] == "executing", END_TIMEOUT_SEC, "the run")
    stack.cloud.cancel(job_id)
    return job_id


def _refused_with_4xx(stack: LocalStack) -> str:
    job_id = f"refused-{uuid.uuid4().hex[:8]}"
    stack.cloud.set_fault("webhook", 400, count=100, job_id=job_id)  # before the job can be delivered
    return str(stack.cloud.submit(stack.qpu_id, circuit("sleep:0.5"), 10, job_id=job_id))


PATHS: dict[str, tuple[Callable[[LocalStack], str], str]] = {
    "completed": (_completed, "completed"),
    "failed": (_failed, "failed"),
    "cancelled before start": (_cancelled_before_start, "cancelled"),
    "cancelled while running": (_cancelled_while_running, "cancelled"),
    "4xx": (_refused_with_4xx, "failed"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_nothing_is_pending_once_a_job_ended(stack: LocalStack, path: str) -> None:
    given, expected = PATHS[path]
    try:
        # given / when: a job that ends this way
        job_id = given(stack)

        # then: at the moment its terminal state is there, its entry is acknowledged
        assert _ended(stack, job_id) == (expected, 0)
    finally:
        stack.cloud.clear_faults()


def test_nothing_is_pending_once_an_entry_is_skipped(stack: LocalStack) -> None:
    # given: an entry without a callback, and a job sent again after it completed
    state = NodeState(stack.broker_redis.client(), stack.qpu_id)
    skips_before = state.counters()["jobs_skipped"]
    done = _completed(stack)
    assert _ended(stack, done) == ("completed", 0)
    stack.cloud_redis.client().xadd(f"qpu:{stack.qpu_id}:jobs", stack.cloud.job(done)["fields"])

    # when: the node takes the entry without a callback
    nameless = stack.cloud.submit(stack.qpu_id, circuit(), 10, omit_fields=["callback_url"])

    # then: each is acknowledged, though neither gets a state
    wait_until(lambda: state.counters()["jobs_skipped"] > skips_before, END_TIMEOUT_SEC, "the skip")
    group = f"qpu:{stack.qpu_id}:workers"
    client = stack.cloud_redis.client()
    wait_until(
        lambda: client.xpending(f"qpu:{stack.qpu_id}:jobs", group)["pending"] == 0,
        END_TIMEOUT_SEC,
        "nothing pending",
    )
    assert _state_and_pending(stack, nameless) == (None, 0)
