"""Slow clients cannot silence the probes: /health and /ready answer within a second while they trickle.

Each slow client opens a connection to the probes port and sends one
header line every 2 s, never finishing its request (a slowloris, or a
broken load balancer).  The probes must still answer, under gunicorn
(``coda-bridge web``, one worker as ``start`` runs it) and under
``start --one-process`` (waitress).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pipeline_support import stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = pytest.mark.e2e

#: More slow clients than gunicorn had threads before (4); fewer than it has now (see gunicorn_config).
SLOW_CLIENTS = 6
#: How often a slow client sends one more header line.
TRICKLE_SEC = 2.0
#: The most a probe may take to answer.
ANSWER_SEC = 1.0
#: Probes of each path, spread over the trickling.
ROUNDS = 6


class SlowClients:
    """``count`` connections that each send one header line every ``TRICKLE_SEC``, never a whole request."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> SlowClients:
        for sock in self.sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: probes\r\n")
        self.thread.start()
        return self

    def _trickle(self) -> None:
        line = 0
        while not self.stop.wait(TRICKLE_SEC):
            line += 1
            for sock in self.sockets:
                try:
                    sock.sendall(f"X-Slow-{line}: {line}\r\n".encode())
                except OSError:  # the server closed it: that is allowed
                    pass

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


def _timed_get(url: str) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        status: int | None = requests.get(url, timeout=ANSWER_SEC * 3).status_code
    except requests.RequestException:
        status = None
    return status, time.monotonic() - started


@pytest.fixture(params=["procfile", "one-process"], ids=["gunicorn", "waitress"])
def probes_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStack]:
    """A node whose probes run under gunicorn (``coda-bridge web``, one worker) or waitress (one process)."""
    env = stack_env(tmp_path, CODA_STREAM_BLOCK_MS="500")
    with LocalStack(tmp_path, env=env, web=True, mode=request.param) as stack:
        yield stack


def test_the_probes_answer_within_a_second_while_slow_clients_trickle(probes_stack: LocalStack) -> None:
    # given a node whose probes answer
    stack = probes_stack
    base = f"http://127.0.0.1:{stack.web_port}"
    wait_until(lambda: _timed_get(base + "/ready")[0] == 200, 60, "/ready to answer 200")

    # when more slow clients than gunicorn's old thread count hold connections open, trickling headers
    answers: list[tuple[str, int | None, float]] = []
    with SlowClients(stack.web_port, SLOW_CLIENTS) as slow:
        pace = threading.Event()
        for _ in range(ROUNDS):
            for path in ("/health", "/ready"):
                status, took = _timed_get(base + path)
                answers.append((path, status, took))
            pace.wait(ANSWER_SEC)  # the probes spread over several trickles, as a kubelet's would
        still_open = sum(1 for sock in slow.sockets if sock.fileno() != -1)

    # then every probe answered, 200, within a second
    assert still_open == SLOW_CLIENTS
    late = [
        (path, status, round(took, 2)) for path, status, took in answers if status != 200 or took > ANSWER_SEC
    ]
    assert not late, f"probes that did not answer 200 within {ANSWER_SEC:g} s: {late}"
