"""systemd knows when each process of the units is ready, and when one hangs.

A harness plays systemd's part where systemd is not PID 1: a Unix datagram
socket as ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` in the environment of the
same command lines the units run (``coda-bridge bridge``, ``coda-bridge
worker jobs``, ``coda-bridge web``), against the local cloud.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_support import circuit, node_env

from coda_bridge.cloud.redis_keys import stream_key
from coda_bridge.devtools.stack import LocalStack, descendants, wait_until
from coda_bridge.ops.process_list import ProcessSpec

pytestmark = pytest.mark.e2e

#: The watchdog period the harness asks for: pings every half of it.
WATCHDOG_USEC = 1_000_000
#: Long enough without a ping that a unit with this WatchdogSec would have failed the process (two
#: periods: four pings missed).
SILENT_SEC = 2 * WATCHDOG_USEC / 1_000_000


class FakeSystemd:
    """The notify socket of one unit: every datagram received, with when it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def seen(self, line: str, since: float = 0.0) -> int:
        return sum(1 for at, said in self.messages if said == line and at >= since)

    def mark(self, line: str) -> int:
        """Send ``line`` to this socket and wait until it is read; what was sent before it came before it.

        The index of the mark in :attr:`messages` (datagrams keep their order; the reader may lag on
        a busy machine, so a time taken here is no bound on what was sent before)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(line.encode(), str(self.path))
        wait_until(lambda: any(said == line for _, said in self.messages), 10, f"the mark {line!r} read")
        return next(i for i, (_, said) in enumerate(self.messages) if said == line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def units(tmp_path: Path) -> Iterator[dict[str, FakeSystemd]]:
    sockets = {name: FakeSystemd(tmp_path / f"{name}.notify") for name in ("bridge", "jobs", "web")}
    yield sockets
    for fake in sockets.values():
        fake.close()


def _cli(*args: str) -> ProcessSpec:
    return ProcessSpec(args[0], (str(Path(sys.executable).parent / "coda-bridge"), *args))


def test_each_unit_says_ready_once_ready_and_stops_pinging_when_it_hangs(
    cloud_stack: LocalStack, units: dict[str, FakeSystemd], tmp_path: Path
) -> None:
    stack = cloud_stack
    executor = tmp_path / "executor"
    executor.mkdir()
    built = executor / "built"
    runs = executor / "ran"
    (executor / "slow_build_executor.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, time

            class Executor:
                def run(self, ir, shots):
                    pathlib.Path({str(runs)!r}).write_text("ran")
                    counts = {{"0" * len(ir.measurements): shots}}
                    return {{"counts": counts, "execution_time_ms": 1, "shots_completed": shots}}

            def create_executor():
                time.sleep(1)  # a backend that takes a while to come up
                pathlib.Path({str(built)!r}).write_text("built")
                return Executor()
            """
        )
    )
    # short stream reads: the bridge pings once per round of its loop, so a round must be shorter
    # than the ping interval (the shipped unit gives it WatchdogSec=90 for 2 s reads and 60 s backoffs)
    env = node_env(stack, CODA_STREAM_BLOCK_MS="200")
    env.update(PYTHONPATH=str(executor), CODA_EXECUTOR_FACTORY="slow_build_executor:create_executor")

    # given the bridge, under its (fake) notify unit
    stack.start_process("bridge", _cli("bridge"), env={**env, **units["bridge"].env()})
    # then READY=1 comes only once it connected and reads the cloud's stream
    wait_until(lambda: units["bridge"].seen("READY=1"), 60, "the bridge's READY=1")
    assert stack.cloud.connects(stack.qpu_id, accepted=True), "READY=1 before the connect"
    groups = stack.cloud_redis.client().xinfo_groups(stream_key(stack.qpu_id))
    assert groups, "READY=1 before the consumer group exists"
    assert units["bridge"].seen("READY=1") == 1

    # given a jobs worker and the probes app under theirs
    stack.start_process("jobs", _cli("worker", "jobs"), env={**env, **units["jobs"].env()})
    stack.start_process("web", _cli("web"), env={**env, **units["web"].env()})
    # then the worker says READY=1 only after its executor was built, and gunicorn once it listens
    wait_until(lambda: units["jobs"].seen("READY=1"), 60, "the jobs worker's READY=1")
    assert built.exists(), "READY=1 before the executor was built"
    wait_until(lambda: units["web"].seen("READY=1"), 60, "the probes app's READY=1")

    # and each pings its watchdog, twice a period
    since = time.monotonic()
    for name in ("bridge", "jobs", "web"):
        wait_until(lambda n=name: units[n].seen("WATCHDOG=1", since) >= 3, 10, f"{name}'s watchdog pings")

    # and a job runs (no results worker here: the job's record says it ran)
    stack.cloud.submit(stack.qpu_id, circuit(1), 10)
    wait_until(runs.exists, 30, "the job to run")

    # when every process hangs (stopped, as a process stuck for good)
    frozen = [stack.children[n].pid for n in ("bridge", "jobs", "web")]
    frozen += [pid for parent in list(frozen) for pid in descendants(parent)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        # (every ping sent before the stop is read before this mark, however late the reader runs)
        frozen_at = {name: units[name].mark("TEST-FROZEN") for name in ("bridge", "jobs", "web")}
        threading.Event().wait(SILENT_SEC)  # the span a watchdog of this period must stay silent
        # then none of them pings any more: systemd would fail each one
        for name in ("bridge", "jobs", "web"):
            after = [said for _, said in units[name].messages[frozen_at[name] + 1 :]]
            assert "WATCHDOG=1" not in after, (name, after)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
