"""The executor host: what it tells the node about its executor (connectivity, build failures).

The shared state is a NodeState on fakeredis; executors are built in code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis

from coda_bridge.control.heartbeat import heartbeat_body
from coda_bridge.errors import ExecutorError
from coda_bridge.executors.host import ExecutorHost, executor_version, reported_edges
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState

QPU = "qpu-host"


class Exec:
    """An executor with whatever attributes a test gives it."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)

    def run(self, ir: Any, shots: int) -> dict[str, Any]:
        counts = {"0" * len(ir.measurements): shots}
        return {"counts": counts, "execution_time_ms": 0.0, "shots_completed": shots}


class Device:
    """A device spec shaped like coda-qubic's: edges as properties."""

    def __init__(self, directed: list[tuple[int, int]], logical: list[tuple[int, int]]) -> None:
        self._directed, self._logical = directed, logical

    @property
    def directed_edges(self) -> list[tuple[int, int]]:
        return self._directed

    @property
    def logical_edges(self) -> list[tuple[int, int]]:
        return self._logical


class BrokenDevice:
    @property
    def directed_edges(self) -> list[tuple[int, int]]:
        raise RuntimeError("calibration file vanished")

    logical_edges = ((0, 1),)


@pytest.fixture
def state() -> Iterator[NodeState]:
    client = fakeredis.FakeRedis()
    yield NodeState(client, QPU)
    client.close()


def host_for(target: object, state: NodeState, **settings: Any) -> ExecutorHost:
    """A host whose factory setting is ``target`` itself (built in code)."""
    made = Settings(qpu_id=QPU, **settings)
    # executor_factory may be the executor or factory itself for settings built in code
    return ExecutorHost(made.model_copy(update={"executor_factory": target}), state)


# --------------------------------------------------------------------------- connectivity


@pytest.mark.parametrize(
    ("executor", "edges"),
    [
        (Exec(connectivity=[[0, 1], [1, 2]]), [[0, 1], [1, 2]]),
        (Exec(connectivity=lambda: [(2, 1)]), [[2, 1]]),
        (Exec(device=Device([(1, 0), (2, 1)], [(0, 1), (1, 2)])), [[1, 0], [2, 1]]),
        (Exec(device=Device([], [(0, 1), (1, 2)])), [[0, 1], [1, 2]]),
        (Exec(connectivity=[[3, 4]], device=Device([(1, 0)], [])), [[3, 4]]),
        (Exec(device=Device([], [])), None),
        (Exec(), None),
    ],
    ids=[
        "connectivity list",
        "connectivity method",
        "device directed edges",
        "device logical edges when no directed",
        "connectivity before device",
        "device without edges",
        "nothing",
    ],
)
def test_edges_come_from_connectivity_else_the_devices_directed_else_logical_edges(
    executor: object, edges: list[list[int]] | None
) -> None:
    assert reported_edges(executor) == edges


def test_a_failing_device_property_is_a_warning_and_the_next_source_is_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="coda_bridge.executors.host"):
        edges = reported_edges(Exec(device=BrokenDevice()))

    assert edges == [[0, 1]]
    assert "directed_edges ignored: RuntimeError: calibration file vanished" in caplog.text


def test_the_device_edges_reach_the_shared_state_and_the_heartbeat(state: NodeState) -> None:
    # given an executor whose device reports directed edges, as coda-qubic's does
    host = host_for(Exec(device=Device([(1, 0), (2, 1)], [(0, 1), (1, 2)])), state)

    # when the host builds it
    host.executor()

    # then the edges are in the shared state, where the bridge's connect and the heartbeat read them
    assert state.connectivity() == [[1, 0], [2, 1]]
    assert heartbeat_body(state, None)["connectivity"] == [[1, 0], [2, 1]]


def test_an_executor_without_edges_clears_edges_an_earlier_one_left(state: NodeState) -> None:
    state.set_connectivity([[0, 1]])

    host_for(Exec(), state).executor()

    assert state.connectivity() is None


# --------------------------------------------------------------------------- build failures


def failing_factory(settings: Any) -> object:
    raise ValueError("device file site/device.yaml:\n  unknown key 'runer_mode'")


def test_a_build_failure_is_recorded_on_one_line_and_raised(state: NodeState) -> None:
    # given a factory that raises
    host = host_for(failing_factory, state)

    # when the host builds the executor
    with pytest.raises(ExecutorError) as caught:
        host.executor()

    # then the error is raised as it was, and recorded on one line in the shared state
    failure = state.executor_failure()
    assert failure is not None
    assert "unknown key 'runer_mode'" in str(caught.value)
    assert failure["error"] == " ".join(str(caught.value).split())
    assert failure["at"].endswith("Z")


def test_a_build_failure_never_records_a_secret(state: NodeState) -> None:
    def leaky(settings: Any) -> object:
        raise ValueError("device refused Bearer abc.def.ghi-secret-token")

    with pytest.raises(ExecutorError):
        host_for(leaky, state).executor()

    failure = state.executor_failure()
    assert failure is not None
    assert "secret-token" not in failure["error"]
    assert "Bearer [secret]" in failure["error"]


def test_a_later_successful_build_clears_the_recorded_failure(state: NodeState) -> None:
    # given a failure recorded by a worker that could not build its executor
    with pytest.raises(ExecutorError):
        host_for(failing_factory, state).executor()
    assert state.executor_failure() is not None

    # when a worker builds a working executor
    host_for(Exec(), state).executor()

    # then the failure is gone
    assert state.executor_failure() is None


def test_a_broker_outage_loses_the_note_but_not_the_build_error(
    state: NodeState, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("broker gone")

    monkeypatch.setattr(state, "set_executor_failure", down)

    with caplog.at_level(logging.WARNING), pytest.raises(ExecutorError) as caught:
        host_for(failing_factory, state).executor()

    assert "runer_mode" in str(caught.value)
    assert "not recorded in the broker (broker gone)" in caplog.text


def test_executor_ir_coda_node_without_coda_node_fails_the_build_and_is_recorded(state: NodeState) -> None:
    # given executor_ir=coda-node and no coda-node installed
    host = host_for(Exec(), state, executor_ir="coda-node")

    # when the host builds the executor
    with pytest.raises(ExecutorError) as caught:
        host.executor()

    # then the build fails now (not at the first job), recorded for /ready and doctor
    assert "pip install coda-node==0.1.1" in str(caught.value)
    failure = state.executor_failure()
    assert failure is not None
    assert "coda_node.server.ir cannot be imported" in failure["error"]


def test_the_origin_of_a_plain_executor_is_unchanged(state: NodeState) -> None:
    host = host_for(SimpleNamespace(run=lambda ir, shots: None), state)

    host.executor()

    assert host.origin is not None
    assert "coda-node" not in host.origin


class _RaisingVersion:
    @property
    def version(self) -> str:
        raise RuntimeError("device not reachable")


@pytest.mark.parametrize(
    ("executor", "version"),
    [
        (Exec(version="2.4.1"), "2.4.1"),
        (Exec(__version__="0.9"), "0.9"),
        (Exec(version=3), None),  # not a string: no version
        (Exec(), None),  # tests' module has no __version__
        (Exec(version="token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"), "token [jwt]"),
        (Exec(version="v" * 200), "v" * 40),
        (_RaisingVersion(), None),
    ],
)
def test_an_executor_s_version_is_what_it_says_short_and_masked(executor: Any, version: str | None) -> None:
    assert executor_version(executor) == version
