"""The actors' node: nothing before process boot; at boot, the node's broker, options and registration."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.middleware import TimeLimit

from actors.actor_options import attempt_limit_ms, backstop_limit_ms
from actors.shared import Node, NodeBoot, boot
from coda_bridge.control.hold import HoldJobs
from coda_bridge.queueing.queues import DELIVER_ACTOR, EXECUTE_ACTOR, JOBS_QUEUE, RESULTS_QUEUE
from coda_bridge.queueing.redis_broker import CodaBroker, broker_namespace
from coda_bridge.settings import Settings
from coda_bridge.state.registry import Registration, live_processes

#: Longest `import actors` may take on a busy machine (it blocked for good before).
IMPORT_DEADLINE_SEC = 60
QPU = "qpu-boot"


def test_importing_the_actors_without_an_identity_returns_and_registers_nothing(
    redis_url: str, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given no identity, and the broker Redis the node would register in
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    client = redis.Redis.from_url(redis_url)

    # when a process imports the actors
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import actors, threading; print(len(actors.broker.actors), threading.active_count())",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=IMPORT_DEADLINE_SEC,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )

    # then it returned with every actor declared, no thread started and nothing written
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "1"]
    assert client.dbsize() == 0
    client.close()


def test_the_node_is_not_there_before_boot() -> None:
    # given a node that never booted / when an actor asks for its parts / then it is told why
    with pytest.raises(RuntimeError, match="not booted"):
        Node().parts  # noqa: B018


@pytest.fixture
def booted(redis_url: str) -> Iterator[tuple[CodaBroker, Node, Settings]]:
    """A broker with two actors declared, booted with settings given (no identity wait)."""
    node = Node()
    broker = CodaBroker(middleware=[NodeBoot(node)])

    @dramatiq.actor(broker=broker, actor_name=DELIVER_ACTOR, queue_name=RESULTS_QUEUE, min_backoff=1000)
    def deliver() -> None: ...

    @dramatiq.actor(broker=broker, actor_name=EXECUTE_ACTOR, queue_name=JOBS_QUEUE, tick=False)
    def execute() -> None: ...

    settings = Settings(qpu_id=QPU, broker_url=redis_url, redis_url=redis_url, webhook_timeout_sec=7)
    boot(broker, node, settings=settings, isolate=False)
    try:
        yield broker, node, settings
    finally:
        assert node.registration is not None
        node.registration.stop()
        broker.close()


def test_boot_connects_the_declared_broker_in_the_qpu_s_namespace(
    booted: tuple[CodaBroker, Node, Settings], redis_url: str
) -> None:
    broker, node, settings = booted
    # then the broker the actors were declared on works in this QPU's namespace, on the settings' Redis
    assert broker.namespace == broker_namespace(QPU)
    assert node.settings is settings
    broker.get_actor(DELIVER_ACTOR).send()
    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"{broker_namespace(QPU)}:{RESULTS_QUEUE}") == 1
    # and the process is registered under its role
    assert [info.role for info in live_processes(client, QPU)] == [node.role]
    client.close()


def test_boot_sets_the_options_the_settings_decide(booted: tuple[CodaBroker, Node, Settings]) -> None:
    broker, _, settings = booted
    assert broker.get_actor(DELIVER_ACTOR).options["time_limit"] == attempt_limit_ms(settings) == 44_000
    assert broker.get_actor(EXECUTE_ACTOR).options["time_limit"] == backstop_limit_ms(settings)
    assert broker.get_actor(DELIVER_ACTOR).options["min_backoff"] == 1000  # declared, kept


def test_boot_puts_the_node_s_middleware_in_dramatiq_s_stack(
    booted: tuple[CodaBroker, Node, Settings],
) -> None:
    broker, _, _ = booted
    kinds = [type(middleware) for middleware in broker.middleware]
    # a held job is not yet running: HoldJobs comes before TimeLimit; the boot middleware is gone
    assert kinds.index(HoldJobs) < kinds.index(TimeLimit)
    assert NodeBoot not in kinds
    # and no middleware type twice (dramatiq warns of it at every worker's boot)
    assert sorted(kind.__name__ for kind in kinds if kinds.count(kind) > 1) == []
    assert type(broker.middleware[-1]).__name__ == "SystemdNotify"


def _booting(redis_url: str) -> tuple[CodaBroker, Node, Settings]:
    """A broker with the boot middleware only, as dramatiq's process boot finds it."""
    node = Node()
    broker = CodaBroker(middleware=[NodeBoot(node, isolate=False)])
    return broker, node, Settings(qpu_id=QPU, broker_url=redis_url, redis_url=redis_url)


def test_a_boot_that_meets_a_broker_redis_error_waits_and_boots_whole(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker whose registration meets a broker Redis timeout once (a busy or restarting broker)
    broker, node, settings = _booting(redis_url)
    monkeypatch.setattr("actors.shared.identity_or_exit", lambda role: settings)
    monkeypatch.setattr("actors.shared.BOOT_RETRY_START_SEC", 0.01)
    start, failures = Registration.start, [redis.TimeoutError("Timeout reading from socket")]

    def start_once_failing(self: Registration) -> Registration:
        if failures:
            raise failures.pop()
        return start(self)

    monkeypatch.setattr(Registration, "start", start_once_failing)

    # When dramatiq's process boot runs (it would log and swallow an error, leaving the node unbooted)
    try:
        with caplog.at_level(logging.WARNING):
            for middleware in list(broker.middleware):
                middleware.after_process_boot(broker)

        # Then the boot waited and tried again, and the node is booted whole
        assert node.booted and node.registration is not None
        assert NodeBoot not in [type(m) for m in broker.middleware]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("Timeout reading from socket" in w and "trying again" in w for w in warnings), warnings
    finally:
        if node.registration is not None:
            node.registration.stop()
        broker.close()


def test_a_boot_that_fails_otherwise_ends_the_worker_process_rather_than_leave_it_half_booted(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker whose boot meets a bug (not the broker's doing)
    broker, node, settings = _booting(redis_url)
    monkeypatch.setattr("actors.shared.identity_or_exit", lambda role: settings)

    def broken(self: Registration) -> Registration:
        raise ValueError("a bug")

    monkeypatch.setattr(Registration, "start", broken)

    # When dramatiq's process boot runs, then the worker process ends (to be started again), never taking
    # jobs that would each fail with "not booted"
    with pytest.raises(SystemExit) as ended:
        NodeBoot(node, isolate=False).after_process_boot(broker)
    assert ended.value.code == os.EX_SOFTWARE
    assert not node.booted
    broker.close()
