"""The cloud clock's offset from ``Date`` headers: when it corrects, what it logs, how processes share it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import jwt
import pytest
import redis

from coda_bridge.cloud.clock import CloudClock
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.state.node_state import NodeState

QPU = "qpu-clock"
#: This host's clock in these tests (Unix seconds); the cloud's is 600 s behind it.
HOST_NOW = 1_800_000_000.0
CLOUD_NOW = HOST_NOW - 600


@pytest.fixture
def state(redis_url: str) -> Iterator[NodeState]:
    client = redis.Redis.from_url(redis_url)
    yield NodeState(client, QPU)
    client.close()


def _date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def test_a_clock_10_minutes_fast_signs_on_the_clouds_time_in_every_process(state: NodeState) -> None:
    # given: one process saw an answer whose Date is 10 minutes behind this host's clock
    measuring = CloudClock(state, local=lambda: HOST_NOW)
    measuring.observe(_date(CLOUD_NOW), HOST_NOW - 0.1, HOST_NOW + 0.1)

    # when: another process, which has had no answer yet, signs a token
    other = CloudClock(state, local=lambda: HOST_NOW)
    signer = Signer(generate_private_key_pem(), "kid-1", QPU, clock=other.now)
    claims = jwt.decode(signer.sign(), options={"verify_signature": False})

    # then: its iat is the cloud's time (to the Date header's second)
    assert abs(claims["iat"] - CLOUD_NOW) <= 1
    assert abs(other.offset_sec + 600) <= 1


def test_an_offset_within_the_date_headers_resolution_is_not_corrected(state: NodeState) -> None:
    clock = CloudClock(state, local=lambda: HOST_NOW)

    clock.observe(_date(HOST_NOW - 1), HOST_NOW, HOST_NOW)

    assert clock.now() == HOST_NOW


def test_no_usable_date_changes_nothing(state: NodeState) -> None:
    clock = CloudClock(state, local=lambda: HOST_NOW)

    for header in (None, "", "unknown", "Tue, 99 Foo 2026 99:99:99"):
        clock.observe(header, HOST_NOW, HOST_NOW)

    assert clock.offset_sec == 0.0
    assert state.clock_offset() is None


def test_the_offset_is_logged_once_when_it_passes_the_line_and_once_when_it_is_back(
    state: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coda_bridge.cloud.clock")
    now = [HOST_NOW]
    clock = CloudClock(state, local=lambda: now[0])

    for _ in range(5):
        clock.observe(_date(CLOUD_NOW), HOST_NOW, HOST_NOW)
    now[0] = CLOUD_NOW  # the host's time was fixed
    for _ in range(5):
        clock.observe(_date(CLOUD_NOW), CLOUD_NOW, CLOUD_NOW)

    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0][0] == logging.WARNING and "600 s ahead of the cloud's" in messages[0][1]
    assert messages[1][0] == logging.INFO and "agrees with the cloud's again" in messages[1][1]
    assert clock.now() == CLOUD_NOW


class _SlowState(NodeState):
    """The node's state, its clock offset read slowly (a busy broker)."""

    def clock_offset(self) -> tuple[float, float] | None:
        time.sleep(0.05)
        return super().clock_offset()


def test_threads_signing_at_once_all_wait_for_the_shared_offset(state: NodeState) -> None:
    # given: the offset another process measured, and a fresh process whose broker answers slowly
    state.set_clock_offset(-600.0)
    clock = CloudClock(_SlowState(state.client, QPU), local=lambda: HOST_NOW)
    start = threading.Barrier(8)
    seen: list[float] = []

    def sign() -> None:
        start.wait()
        seen.append(clock.now())

    # when: eight delivery threads sign their first tokens at once
    threads = [threading.Thread(target=sign) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    # then: every one signs on the cloud's time
    assert seen == [CLOUD_NOW] * 8


def test_an_offset_read_from_another_process_is_not_logged_again(
    state: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coda_bridge.cloud.clock")
    state.set_clock_offset(-600.0)
    clock = CloudClock(state, local=lambda: HOST_NOW)

    clock.now()
    clock.observe(_date(CLOUD_NOW), HOST_NOW, HOST_NOW)

    assert caplog.records == []
