"""A failed executor build, piece by piece: the boot middleware, /ready's reason, doctor, the settings.

The middleware runs in a real dramatiq Worker on the stub broker; readiness
reads fakeredis; doctor reads a real Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import fakeredis
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import wait_until
from coda_bridge.errors import ConfigError, ExecutorError
from coda_bridge.ops.doctor import check_coda_command, check_executor, check_executor_boot
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.queueing.middleware import Build, BuildAtBoot
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.node_state import NodeState
from coda_bridge.state.registry import Registration, ready_key
from coda_bridge.web.probes_app import readiness

QPU = "qpu-boot"
#: How long a stub worker's threads wait for a message before looking again (ms): a quick stop.
WORKER_POLL_MS = 50
#: A node's settings, shared state and cloud Redis.
Node = tuple[Settings, NodeState, fakeredis.FakeRedis]
REASON = "executor factory my.factory:create_executor raised ValueError: unknown key 'runer_mode'"
#: /ready's reason while no jobs worker of the node has built its executor.
NO_JOBS_WORKER = "no running jobs worker has a built executor"
#: How long a test's jobs worker registration lives unrefreshed: beyond any test.
HELD_SEC = 300.0


# --------------------------------------------------------------------------- the boot middleware


@pytest.fixture
def stub() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def jobs_actor(broker: StubBroker, ran: list[int]) -> Any:
    def job(n: int) -> None:
        ran.append(n)

    return dramatiq.actor(job, broker=broker, queue_name="jobs", actor_name="boot_job")


def test_a_jobs_worker_that_cannot_build_exits_78_before_taking_a_message(
    stub: StubBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # given a queued job and a build that fails
    def build() -> object:
        raise ExecutorError(REASON)

    stub.add_middleware(BuildAtBoot(Build("jobs", build, "Executor")))
    ran: list[int] = []
    jobs_actor(stub, ran).send(1)
    worker = dramatiq.Worker(stub, queues=["jobs"], worker_threads=1, worker_timeout=WORKER_POLL_MS)

    # when the worker boots
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as caught:
            worker.start()
    finally:
        worker.stop()

    # then it exits with EX_CONFIG, one line saying why, and the job is still queued, never run
    assert caught.value.code == EX_CONFIG
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"Executor cannot be built, so this worker stops (exit 78) and jobs wait in the jobs queue: {REASON}"
    ]
    assert worker.consumers == {}
    assert ran == []
    assert stub.queues["jobs"].qsize() == 1


def test_a_worker_of_other_queues_never_builds_the_executor(stub: StubBroker) -> None:
    built: list[str] = []
    stub.add_middleware(BuildAtBoot(Build("jobs", lambda: built.append("x"), "Executor")))
    stub.declare_queue("results")
    worker = dramatiq.Worker(stub, queues=["results"], worker_threads=1, worker_timeout=WORKER_POLL_MS)

    try:
        worker.start()
    finally:
        worker.stop()

    assert built == []


def test_a_worker_builds_what_each_of_its_queues_needs_and_only_that(stub: StubBroker) -> None:
    # given one middleware building for the jobs queue and for the results queue
    built: list[str] = []
    stub.add_middleware(
        BuildAtBoot(
            Build("jobs", lambda: built.append("executor"), "Executor", lambda: built.append("ready")),
            Build("results", lambda: built.append("signer"), "The result signer"),
        )
    )
    stub.declare_queue("jobs")
    stub.declare_queue("results")

    # when a worker of the results queue boots, then one of both queues
    for queues in (["results"], ["jobs", "results"]):
        worker = dramatiq.Worker(stub, queues=queues, worker_threads=1, worker_timeout=WORKER_POLL_MS)
        try:
            worker.start()
        finally:
            worker.stop()

    # then the first built the signer only, the second both in order, and said it is ready after them
    assert built == ["signer", "executor", "signer", "ready"]


def test_a_worker_of_both_queues_whose_signer_fails_never_says_its_executor_is_ready(
    stub: StubBroker,
) -> None:
    # given a worker of both queues: its executor builds, its result signer cannot (a bad key)
    said: list[str] = []

    def signer() -> object:
        raise ConfigError("the node's private key is not a PEM key")

    stub.add_middleware(
        BuildAtBoot(
            Build("jobs", lambda: None, "Executor", lambda: said.append("executor ready")),
            Build("results", signer, "The result signer"),
        )
    )
    stub.declare_queue("jobs")
    stub.declare_queue("results")
    worker = dramatiq.Worker(stub, worker_threads=1, worker_timeout=WORKER_POLL_MS)

    # when it boots
    try:
        with pytest.raises(SystemExit) as caught:
            worker.start()
    finally:
        worker.stop()

    # then it exits 78 without having said it can run jobs (its ready mark would outlive it by its TTL)
    assert caught.value.code == EX_CONFIG
    assert said == []


def test_an_unexpected_build_error_is_left_to_dramatiq_and_the_worker_boots(
    stub: StubBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # given a build that fails with something other than a CodaError (a bug, a Redis blip)
    def build() -> object:
        raise redis.ConnectionError("broker blip")

    stub.add_middleware(BuildAtBoot(Build("jobs", build, "Executor")))
    jobs_actor(stub, [])
    worker = dramatiq.Worker(stub, queues=["jobs"], worker_threads=1, worker_timeout=WORKER_POLL_MS)

    # when the worker boots
    try:
        with caplog.at_level(logging.CRITICAL):
            worker.start()
        started = bool(worker.consumers)
    finally:
        worker.stop()

    # then dramatiq logged it and the worker runs (its first job builds again)
    assert started
    assert "Unexpected failure in before_worker_boot" in caplog.text


# --------------------------------------------------------------------------- /ready


@pytest.fixture
def workerless() -> Iterator[Node]:
    """Settings, a shared state healthy but for its jobs worker (none yet), a cloud Redis with the group."""
    server = fakeredis.FakeServer()
    local, cloud = fakeredis.FakeRedis(server=server, db=0), fakeredis.FakeRedis(server=server, db=1)
    state = NodeState(local, QPU)
    state.set_vpn_state("ready", 60)
    state.stream_read()
    cloud.xgroup_create(stream_key(QPU), group_name(QPU), id="0", mkstream=True)
    yield Settings(qpu_id=QPU), state, cloud
    local.close()
    cloud.close()


@pytest.fixture
def node(workerless: Node) -> Node:
    """A healthy node: a jobs worker of it has built its executor."""
    _, state, _ = workerless
    Registration(state.client, QPU, "jobs", ttl_sec=HELD_SEC).executor_built()
    return workerless


def test_ready_names_the_missing_jobs_worker_until_one_builds_its_executor(workerless: Node) -> None:
    # given a node healthy in every other way, whose jobs worker is registered but still building
    settings, state, cloud = workerless
    worker = Registration(state.client, QPU, "jobs", ttl_sec=HELD_SEC)

    # when readiness is checked before and after the worker built its executor, and after it stopped
    building = readiness(settings, state, cloud)
    worker.executor_built()
    built = readiness(settings, state, cloud)
    worker.stop()
    stopped = readiness(settings, state, cloud)

    # then it is ready only while the worker holds a built executor; the reason names what is missing
    assert (building["ready"], building["reason"]) == (False, NO_JOBS_WORKER)
    assert built["ready"] is True and "reason" not in built
    assert (stopped["ready"], stopped["reason"]) == (False, NO_JOBS_WORKER)


def test_ready_again_names_the_missing_jobs_worker_once_its_registration_lapses(workerless: Node) -> None:
    # given a node whose one jobs worker built its executor, then stopped refreshing its registration
    settings, state, cloud = workerless
    worker = Registration(state.client, QPU, "jobs", ttl_sec=HELD_SEC)
    worker.executor_built()
    assert readiness(settings, state, cloud)["ready"] is True

    # when its ready key's time to live runs out (as it does a TTL after the worker's last refresh)
    state.client.pexpire(ready_key(QPU, worker.info.host, worker.info.pid), 1)
    wait_until(lambda: not readiness(settings, state, cloud)["ready"], 10, "the registration to lapse")

    # then the node is not ready, for want of a jobs worker
    assert readiness(settings, state, cloud)["reason"] == NO_JOBS_WORKER


def test_a_recorded_build_failure_is_the_reason_over_the_missing_worker(workerless: Node) -> None:
    # given a node with no ready jobs worker because its worker recorded a build failure and stopped
    settings, state, cloud = workerless
    state.set_executor_failure(REASON)

    # when readiness is checked, then the recorded failure is the reason (it says what to fix)
    assert readiness(settings, state, cloud)["reason"] == f"the executor cannot be built: {REASON}"


def test_ready_names_the_executor_while_a_build_failure_is_recorded(
    node: Node,
) -> None:
    # given an otherwise healthy node whose jobs worker recorded a build failure
    settings, state, cloud = node
    state.set_executor_failure(REASON)

    # when readiness is checked
    body = readiness(settings, state, cloud)

    # then it is not ready, the reason naming the executor and its error; every field is there
    assert body["ready"] is False
    assert body["reason"] == f"the executor cannot be built: {REASON}"
    assert {"vpn_state", "redis_healthy", "current_job"} <= set(body)


def test_ready_again_once_the_failure_is_cleared(node: Node) -> None:
    settings, state, cloud = node
    state.set_executor_failure(REASON)

    state.clear_executor_failure()

    assert readiness(settings, state, cloud)["ready"] is True


def test_a_recorded_failure_has_no_expiry(node: Node) -> None:
    # the worker that failed has stopped: nothing would refresh a mark that expires
    _, state, _ = node

    state.set_executor_failure(REASON)

    assert state.client.ttl(state.key("executor_failure")) == -1


# --------------------------------------------------------------------------- doctor


def test_doctor_tells_what_to_fix_after_a_worker_stopped_at_boot(redis_url: str) -> None:
    # given a recorded build failure and a device config in the settings
    settings = Settings(qpu_id=QPU, broker_url=redis_url, device_config="site/device.yaml")
    NodeState(redis.Redis.from_url(redis_url), QPU).set_executor_failure(REASON, ts=1_800_000_000.0)

    # when doctor looks
    check = check_executor_boot(settings)

    # then it says when the worker stopped, why, and which file to fix
    assert check is not None
    assert check.line() == (
        "FIX: executor worker: the jobs worker stopped at 2027-01-15T08:00:00.000Z because the executor "
        f"cannot be built ({REASON}); fix the device config site/device.yaml or CODA_EXECUTOR_FACTORY, "
        "then restart the node (jobs wait until then)"
    )


def test_doctor_says_nothing_of_the_worker_when_no_failure_is_recorded(redis_url: str) -> None:
    assert check_executor_boot(Settings(qpu_id=QPU, broker_url=redis_url)) is None


def test_doctor_leaves_an_unreachable_broker_to_the_broker_check() -> None:
    settings = Settings(qpu_id=QPU, broker_url=f"redis://127.0.0.1:{free_port()}/0")

    assert check_executor_boot(settings) is None


def test_doctors_executor_check_names_the_device_file_to_fix(tmp_path: Path) -> None:
    settings = Settings(
        executor_factory="no_such_backend_module:create_executor", device_config=str(tmp_path / "d.yaml")
    )

    check = check_executor(settings)

    assert check.ok is False
    assert "cannot import no_such_backend_module" in check.detail
    assert check.detail.endswith(f"fix the device config {tmp_path / 'd.yaml'} or CODA_EXECUTOR_FACTORY")


def test_doctor_warns_when_coda_on_path_is_another_program(tmp_path: Path) -> None:
    # given a `coda` on PATH that is not coda-bridge's (coda-node installs one)
    other = tmp_path / "coda"
    other.write_text("#!/usr/bin/python\nfrom coda_node.server.cli import main\nmain()\n")

    # when doctor looks
    check = check_coda_command(lambda name: str(other))

    # then it warns, naming the program and the name that always works
    assert check is not None
    assert check.ok is True
    assert check.line() == (
        f"warn coda command: `coda` on PATH is {other}, another program (coda-node installs one too); "
        "use `coda-bridge`, the name that always works"
    )


def test_doctor_is_content_when_coda_on_path_is_ours(tmp_path: Path) -> None:
    ours = tmp_path / "coda"
    ours.write_text("#!/usr/bin/python\nfrom coda_bridge.cli.main import main\nmain()\n")

    check = check_coda_command(lambda name: str(ours))

    assert check is not None
    assert check.line() == f"ok   coda command: {ours} is coda-bridge's"


def test_doctor_says_nothing_when_no_coda_is_on_path() -> None:
    assert check_coda_command(lambda name: None) is None


# --------------------------------------------------------------------------- the settings


def test_site_device_yaml_becomes_the_device_config_when_none_is_set(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given ./site/device.yaml and no CODA_DEVICE_CONFIG
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "device.yaml").write_text("runner_mode: qiskit_sim\n")
    clean_env.chdir(tmp_path)

    # when the settings load
    settings = load_settings()

    # then the factory will find it in settings.device_config
    assert settings.device_config == "site/device.yaml"


def test_an_explicit_device_config_wins_over_site_device_yaml(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "device.yaml").write_text("{}\n")
    clean_env.chdir(tmp_path)
    clean_env.setenv("CODA_DEVICE_CONFIG", "/etc/fridge.yaml")

    assert load_settings().device_config == "/etc/fridge.yaml"


def test_no_device_config_without_site_device_yaml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)

    assert load_settings().device_config is None


def test_an_unknown_executor_ir_is_refused_naming_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CODA_EXECUTOR_IR", "qiskit")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert str(caught.value) == (
        "CODA_EXECUTOR_IR='qiskit' is not valid: Value error, expected one of auto, coda-bridge, coda-node"
    )
