"""Huge messages and odd ids through a real node (batching executor, max_job_bytes of 1 MiB).

Each test ends with every entry acknowledged and a normal job completing
behind the hostile ones.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import redis
from pipeline_support import FAST_LIMITS, circuit, deliveries, executor_runs, stack_env, status

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

#: The node's max_job_bytes in these tests: small, so the jobs stay fast.
LIMIT_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("hostile")
    env = stack_env(
        workdir,
        **FAST_LIMITS,
        CODA_EXECUTOR_FACTORY="coda_test_executor:create_batch_executor",
        CODA_MAX_JOB_BYTES=str(LIMIT_BYTES),
    )
    with LocalStack(workdir, env=env) as stack:
        first = stack.cloud.submit(stack.qpu_id, circuit(), 10)  # resolves the executor: it batches
        stack.cloud.wait_for_results([first], timeout_sec=60)  # (a busy machine boots slowly)
        yield stack


def _padded(tag: str, pad_bytes: int) -> dict[str, Any]:
    """A valid circuit carrying ``pad_bytes`` of padding (unknown top-level IR fields are allowed)."""
    return {**circuit("ok", tag=tag), "pad": "x" * pad_bytes}


def _nothing_pending(stack: LocalStack) -> bool:
    reply: Any = stack.cloud_redis.client().xpending(
        f"qpu:{stack.qpu_id}:jobs", f"qpu:{stack.qpu_id}:workers"
    )
    return int(reply["pending"]) == 0


def _batches(workdir: Path) -> list[int]:
    lines = (workdir / "executor.log").read_text().splitlines()
    return [int(line.split()[1]) for line in lines if line.startswith("batch ")]


def _normal_job_completes(stack: LocalStack) -> None:
    after = stack.cloud.submit(stack.qpu_id, circuit(), 10)
    assert stack.cloud.wait_for_result(after, timeout_sec=30)["status"] == "completed"


def test_large_jobs_are_forwarded_in_messages_under_the_budget_and_all_complete(node: LocalStack) -> None:
    # Given six valid jobs of 300 kB waiting while the bridge is down (1.8 MB together: over the budget)
    tags = [f"large-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    node.children["bridge"].stop()
    ids = [node.cloud.submit(node.qpu_id, _padded(tag, 300_000), 10) for tag in tags]
    batches_before = len(_batches(node.workdir))

    # When the bridge starts again
    node.start_process("bridge")
    results = node.cloud.wait_for_results(ids, timeout_sec=60)

    # Then they went in several messages, none over the budget, and each job completed once
    assert {r["status"] for r in results.values()} == {"completed"}
    batches = _batches(node.workdir)[batches_before:]
    assert sum(batches) == 6 and max(batches) <= 3, batches
    assert [executor_runs(node, tag) for tag in tags] == [1] * 6
    wait_until(lambda: _nothing_pending(node), 20, "every entry to be acknowledged")
    _normal_job_completes(node)


def test_a_job_over_the_limit_fails_naming_its_size_and_the_next_job_completes(node: LocalStack) -> None:
    # Given a job of 1.2 MB (over the 1 MiB limit) and a normal job right behind it
    big = node.cloud.submit(node.qpu_id, _padded("huge", 1_200_000), 10, validate=False)
    after = node.cloud.submit(node.qpu_id, circuit(), 10)

    # When the node takes them
    results = node.cloud.wait_for_results([big, after], timeout_sec=60)

    # Then the big one fails with one result naming its size and the limit; the next one completes
    assert results[after]["status"] == "completed"
    error = results[big]["error"]
    assert results[big]["status"] == "failed"
    assert "over the limit of 1.0 MiB (1048576 bytes) (max_job_bytes)" in error
    assert re.search(r"^Job is 1\.1 MiB \(120\d{4} bytes\)", error), error
    assert len(deliveries(node, big)) == 1
    wait_until(lambda: status(node, big).get("state") == "failed", 20, "the failed status")
    wait_until(lambda: _nothing_pending(node), 20, "every entry to be acknowledged")


def test_a_message_the_broker_refuses_fails_its_job_and_the_stream_goes_on(node: LocalStack) -> None:
    # Given a broker that refuses values over 1 MB and a bridge that allows 4 MiB jobs
    broker = node.broker_redis.client()
    broker.config_set("proto-max-bulk-len", str(1024 * 1024))
    node.children["bridge"].stop()
    node.start_process("bridge", env={"CODA_MAX_JOB_BYTES": str(4 * LIMIT_BYTES)})
    try:
        # When a 1.5 MB job arrives, a normal one behind it
        big = node.cloud.submit(node.qpu_id, _padded("refused", 1_500_000), 10, validate=False)
        after = node.cloud.submit(node.qpu_id, circuit(), 10)
        results = node.cloud.wait_for_results([big, after], timeout_sec=60)
    finally:
        broker.config_set("proto-max-bulk-len", str(512 * 1024 * 1024))
        node.children["bridge"].stop()
        node.start_process("bridge")

    # Then the big one fails naming the broker's refusal (not an outage), and the next one completes
    assert results[after]["status"] == "completed"
    assert results[big]["status"] == "failed"
    assert "The local broker refused the job's message" in results[big]["error"]
    assert "Redis unavailable" not in node.log_tail("bridge", 400)
    wait_until(lambda: _nothing_pending(node), 20, "every entry to be acknowledged")


@pytest.mark.parametrize("first_suffix", ["", ":delivering"], ids=["K first", "K:delivering first"])
def test_ids_k_and_k_delivering_are_two_jobs_with_their_own_results(
    node: LocalStack, first_suffix: str
) -> None:
    # Given job ids K and K:delivering arriving together, in either order
    base = f"K-{uuid.uuid4().hex[:8]}"
    order = [base + first_suffix, base + (":delivering" if not first_suffix else "")]
    node.children["bridge"].stop()
    for job_id in order:
        node.cloud.submit(node.qpu_id, circuit(), 10, job_id=job_id)
    node.start_process("bridge")

    # When the node runs them
    results = node.cloud.wait_for_results(order, timeout_sec=30)

    # Then each completes with exactly one result of its own
    assert {job_id: r["status"] for job_id, r in results.items()} == dict.fromkeys(order, "completed")
    assert [len(deliveries(node, job_id)) for job_id in order] == [1, 1]
    for job_id in order:
        wait_until(lambda j=job_id: status(node, j).get("state") == "completed", 20, f"{job_id} completed")
    wait_until(lambda: _nothing_pending(node), 20, "every entry to be acknowledged")
    _normal_job_completes(node)


def test_two_ids_differing_only_in_invalid_utf8_bytes_each_fail_naming_themselves(node: LocalStack) -> None:
    # Given two entries whose job ids differ only in bytes that are not UTF-8
    tag = uuid.uuid4().hex[:8]
    template = node.cloud.job(node.cloud.submit(node.qpu_id, circuit(), 10))["fields"]
    raw = redis.Redis.from_url(node.cloud_redis.url)
    ids = [f"bad-{tag}-".encode() + suffix for suffix in (b"\xff", b"\xfe")]
    for job_id in ids:
        fields = {**template, "ir_json": json.dumps(circuit("ok", tag=tag)), "job_id": job_id}
        raw.xadd(f"qpu:{node.qpu_id}:jobs", fields)

    # When the node reads them, then a normal job
    _normal_job_completes(node)

    # Then each id's own status hash says failed, naming it; neither ran nor got a webhook
    for job_id in ids:
        key = b"qpu:job:" + job_id + b":status"
        wait_until(lambda k=key: raw.hget(k, "state") == b"failed", 20, f"{key!r} failed")
        error = raw.hget(key, "error") or b""
        assert repr(job_id).encode() in error and b"not valid UTF-8" in error
    assert executor_runs(node, tag) == 0
    assert not [w for w in node.cloud.webhooks() if tag in str(w.get("job_id"))]
    wait_until(lambda: _nothing_pending(node), 20, "every entry to be acknowledged")


def test_odd_ids_still_complete_once_each_and_stay_one_key_segment(node: LocalStack) -> None:
    # Given ids made of key syntax and a long one (the local cloud puts each id in its callback URL,
    # so ids a URL cannot carry fail there, before the node's keys matter)
    tag = uuid.uuid4().hex[:8]
    odd = [f"{tag}:a*b", f"{{{tag}}}", f"{tag}:claim:x", f"*{tag}*", tag * 180]
    node.children["bridge"].stop()
    for job_id in odd:
        node.cloud.submit(node.qpu_id, circuit(), 10, job_id=job_id)
    node.start_process("bridge")

    # When the node runs them
    results = node.cloud.wait_for_results(odd, timeout_sec=60)

    # Then each completes with one result of its own, and each record is one key of its own family
    assert [results[job_id]["status"] for job_id in odd] == ["completed"] * len(odd)
    assert [len(deliveries(node, job_id)) for job_id in odd] == [1] * len(odd)
    keys: Any = node.broker_redis.client().keys(f"coda-bridge:{node.qpu_id}:job:*{tag}*")
    records = [str(key) for key in keys if not str(key).endswith(":delivering")]  # leases expire later
    assert sorted(unquote(key.split(":")[3]) for key in records) == sorted(odd)
    assert all(key.count(":") == 3 for key in records), records[:3]
    wait_until(lambda: _nothing_pending(node), 20, "every entry to be acknowledged")
