"""Driving executors through the contract: plain and async run, result checks, batches, cancel."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from coda_bridge.circuits.ir import Circuit, parse_ir
from coda_bridge.errors import ExecutorError
from coda_bridge.executors import (
    ExecutionResult,
    Executor,
    NoopExecutor,
    call_batch_run,
    call_run,
    cancel,
    coerce_result,
    has_batch,
)


def make_circuit(measurements: list[int] | None = None) -> Circuit:
    return parse_ir(
        {
            "target": "cz",
            "num_qubits": 3,
            "gates": [{"gate": "rx", "qubits": [0], "params": [1.0]}],
            "measurements": [0, 1] if measurements is None else measurements,
            "metadata": {"source_hash": "h", "compiled_at": "2026-01-01T00:00:00Z"},
        }
    )


CIRCUIT = make_circuit()


@dataclass
class FirstRuntimeResult:
    """The shape of a result object from an executor written for the first runtime."""

    counts: Any
    execution_time_ms: Any
    shots_completed: Any


class PlainExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[Circuit, int]] = []

    def run(self, ir: Circuit, shots: int) -> FirstRuntimeResult:
        self.calls.append((ir, shots))
        return FirstRuntimeResult({"0" * len(ir.measurements): shots}, 1.5, shots)


class AsyncExecutor:
    """Holds an async resource bound to the loop it was first used on, like an HTTP session."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock: asyncio.Lock | None = None
        self.cancelled = 0

    async def run(self, ir: Circuit, shots: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self.lock is None:
            self.loop, self.lock = loop, asyncio.Lock()
        assert loop is self.loop, "async executor moved to another event loop"
        async with self.lock:
            await asyncio.sleep(0)
        return {
            "counts": {"1" * len(ir.measurements): shots},
            "execution_time_ms": 2,
            "shots_completed": shots,
        }

    async def cancel_current_job(self) -> None:
        await asyncio.sleep(0)
        self.cancelled += 1


# --------------------------------------------------------------------------- call_run


def test_plain_run_result_object() -> None:
    executor = PlainExecutor()
    result = call_run(executor, CIRCUIT, 100)
    assert result == ExecutionResult(counts={"00": 100}, execution_time_ms=1.5, shots_completed=100)
    assert executor.calls == [(CIRCUIT, 100)]


def test_async_run_keeps_one_loop_per_thread() -> None:
    executor = AsyncExecutor()
    for _ in range(3):
        result = call_run(executor, CIRCUIT, 10)
        assert result.counts == {"11": 10}
        assert result.execution_time_ms == 2.0


def test_async_run_from_several_threads() -> None:
    results: list[ExecutionResult] = []

    def work() -> None:
        executor = AsyncExecutor()
        results.extend(call_run(executor, CIRCUIT, 5) for _ in range(2))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6


def test_async_run_keeps_its_loop_across_short_lived_threads() -> None:
    """Jobs run on a fresh thread each; the executor's async resources must still work."""
    executor = AsyncExecutor()
    errors: list[BaseException] = []

    def job() -> None:
        try:
            call_run(executor, CIRCUIT, 3)
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        thread = threading.Thread(target=job)
        thread.start()
        thread.join()
    assert errors == []
    assert executor.loop is not None


def test_async_run_from_code_inside_another_running_loop() -> None:
    async def main() -> ExecutionResult:
        return call_run(AsyncExecutor(), CIRCUIT, 1)

    assert asyncio.run(main()).counts == {"11": 1}


def test_async_run_calling_back_into_its_own_loop_is_refused() -> None:
    class Nested:
        async def run(self, ir: Circuit, shots: int) -> ExecutionResult:
            return call_run(AsyncExecutor(), ir, shots)

    with pytest.raises(ExecutorError, match="from its own event loop"):
        call_run(Nested(), CIRCUIT, 1)


def test_async_factory_resources_live_on_the_run_loop() -> None:
    from coda_bridge.executors.base import resolve_awaitable

    async def factory() -> AsyncExecutor:
        executor = AsyncExecutor()
        executor.loop, executor.lock = asyncio.get_running_loop(), asyncio.Lock()
        return executor

    executor = resolve_awaitable(factory())
    assert call_run(executor, CIRCUIT, 2).shots_completed == 2


def test_noop_executor() -> None:
    result = call_run(NoopExecutor(), CIRCUIT, 42)
    assert result.counts == {"00": 42}
    assert result.shots_completed == 42
    assert result.execution_time_ms >= 0
    assert call_run(NoopExecutor(), make_circuit([]), 3).counts == {"": 3}


def test_executor_protocol_is_runtime_checkable() -> None:
    assert isinstance(NoopExecutor(), Executor)
    assert isinstance(AsyncExecutor(), Executor)
    assert not isinstance(object(), Executor)


def test_missing_run_method() -> None:
    with pytest.raises(ExecutorError, match="has no run"):
        call_run(object(), CIRCUIT, 1)


def test_exception_in_run_becomes_executor_error() -> None:
    class Broken:
        def run(self, ir: Circuit, shots: int) -> None:
            raise RuntimeError("hardware\non fire")

    with pytest.raises(ExecutorError, match="run\\(\\) failed: RuntimeError: hardware on fire") as info:
        call_run(Broken(), CIRCUIT, 1)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_executor_error_in_run_passes_through() -> None:
    class Refuses:
        async def run(self, ir: Circuit, shots: int) -> None:
            raise ExecutorError("calibration stale")

    with pytest.raises(ExecutorError, match=r"^calibration stale$"):
        call_run(Refuses(), CIRCUIT, 1)


# --------------------------------------------------------------------------- coerce_result


def good(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"counts": {"00": 6, "11": 4}, "execution_time_ms": 3.0, "shots_completed": 10}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "obj",
    [
        good(),
        FirstRuntimeResult({"00": 6, "11": 4}, 3.0, 10),
        SimpleNamespace(**good()),
        ExecutionResult(counts={"00": 6, "11": 4}, execution_time_ms=3.0, shots_completed=10),
        good(counts={"00": np.int64(6), "11": np.int32(4)}, execution_time_ms=np.float32(3.0)),
        good(execution_time_ms=3, shots_completed=np.int64(10)),
    ],
)
def test_coerce_accepts_objects_and_mappings(obj: Any) -> None:
    result = coerce_result(obj, CIRCUIT, 10)
    assert result == ExecutionResult(counts={"00": 6, "11": 4}, execution_time_ms=3.0, shots_completed=10)
    assert all(type(v) is int for v in result.counts.values())
    assert type(result.execution_time_ms) is float
    assert type(result.shots_completed) is int


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (None, "returned None"),
        ("00", "str without 'counts'"),
        ([("00", 1)], "list without 'counts'"),
        ({"execution_time_ms": 1.0, "shots_completed": 1}, "no 'counts' key"),
        (good(counts=[("00", 10)]), "counts must be a mapping"),
        (good(counts={"00": 5.0}), "count for '00' is not an integer"),
        (good(counts={"00": "5"}), "count for '00' is not an integer"),
        (good(counts={"00": True}), "count for '00' is not an integer"),
        (good(counts={"00": -1}), "count for '00' is negative"),
        (good(counts={"0": 10}), "key '0' is not a bitstring of 2 bit(s)"),
        (good(counts={"000": 10}), "key '000' is not a bitstring of 2 bit(s)"),
        (good(counts={"0x": 10}), "key '0x' is not a bitstring"),
        (good(counts={"02": 10}), "key '02' is not a bitstring"),
        (good(counts={0: 10}), "key 0 is not a bitstring"),
        (good(counts={b"00": 10}), "key b'00' is not a bitstring"),
        (good(execution_time_ms="fast"), "execution_time_ms is not a number"),
        (good(execution_time_ms=float("nan")), "execution_time_ms must be finite"),
        (good(execution_time_ms=-1.0), "execution_time_ms must be finite and >= 0"),
        (good(shots_completed=10.0), "shots_completed is not an integer"),
        (good(shots_completed=-3), "shots_completed is negative"),
        (SimpleNamespace(counts={}, shots_completed=0), "without 'execution_time_ms'"),
    ],
)
def test_coerce_rejects_bad_results(obj: Any, fragment: str) -> None:
    with pytest.raises(ExecutorError) as info:
        coerce_result(obj, CIRCUIT, 10)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_coerce_does_not_echo_huge_keys() -> None:
    with pytest.raises(ExecutorError) as info:
        coerce_result(good(counts={"0" * 100_000: 1}), CIRCUIT, 10)
    assert len(str(info.value)) < 400


def test_counts_not_summing_to_shots_completed_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="coda_bridge.executors.base"):
        result = coerce_result(good(shots_completed=12), CIRCUIT, 12)
    assert result.shots_completed == 12
    assert "sum to 10 but shots_completed is 12" in caplog.text


def test_shots_completed_may_differ_from_shots() -> None:
    assert coerce_result(good(), CIRCUIT, 1000).shots_completed == 10


# --------------------------------------------------------------------------- batches


class BatchExecutor(PlainExecutor):
    def __init__(self, answer: Any = None) -> None:
        super().__init__()
        self.answer = answer
        self.batches: list[list[tuple[Circuit, int]]] = []

    def batch_run(self, jobs: list[tuple[Circuit, int]]) -> Any:
        self.batches.append(jobs)
        if self.answer is not None:
            return self.answer
        return [self.run(ir, shots) for ir, shots in jobs]


class AsyncBatchExecutor(AsyncExecutor):
    async def batch_run(self, jobs: list[tuple[Circuit, int]]) -> list[dict[str, Any]]:
        return [await self.run(ir, shots) for ir, shots in jobs]


def test_has_batch() -> None:
    assert has_batch(BatchExecutor())
    assert not has_batch(PlainExecutor())
    assert not has_batch(SimpleNamespace(batch_run=None))


def test_batch_uses_batch_run_when_offered() -> None:
    executor = BatchExecutor()
    other = make_circuit([2])
    results = call_batch_run(executor, [(CIRCUIT, 5), (other, 6)])
    assert [r.counts for r in results] == [{"00": 5}, {"0": 6}]
    assert executor.batches == [[(CIRCUIT, 5), (other, 6)]]


def test_async_batch_run() -> None:
    results = call_batch_run(AsyncBatchExecutor(), [(CIRCUIT, 5), (CIRCUIT, 6)])
    assert [r.shots_completed for r in results] == [5, 6]


def test_batch_falls_back_to_run_one_by_one() -> None:
    executor = PlainExecutor()
    results = call_batch_run(executor, [(CIRCUIT, 1), (CIRCUIT, 2), (CIRCUIT, 3)])
    assert [r.shots_completed for r in results] == [1, 2, 3]
    assert len(executor.calls) == 3


def test_empty_batch_calls_nothing() -> None:
    executor = BatchExecutor()
    assert call_batch_run(executor, []) == []
    assert executor.batches == []


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ([good()], "returned 1 result(s) for 2 job(s)"),
        ([good(), good(), good()], "returned 3 result(s) for 2 job(s)"),
        ({"a": 1}, "returned dict, expected a list of results"),
        ("results", "returned str, expected a list of results"),
        (42, "returned int, expected a list of results"),
        ([good(), good(counts={"2": 1})], "batch_run() result 1: executor result count key '2'"),
    ],
)
def test_batch_must_return_one_valid_result_per_job(answer: Any, fragment: str) -> None:
    with pytest.raises(ExecutorError) as info:
        call_batch_run(BatchExecutor(answer), [(CIRCUIT, 10), (CIRCUIT, 10)])
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- cancel


def test_cancel_without_method_returns_false() -> None:
    assert cancel(PlainExecutor()) is False


def test_cancel_plain_method() -> None:
    calls = []
    executor = SimpleNamespace(run=lambda ir, shots: None, cancel_current_job=lambda: calls.append(1))
    assert cancel(executor) is True
    assert calls == [1]


def test_cancel_async_method() -> None:
    executor = AsyncExecutor()
    assert cancel(executor) is True
    assert executor.cancelled == 1


def test_cancel_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def explode() -> None:
        raise RuntimeError("device busy")

    with caplog.at_level(logging.WARNING, logger="coda_bridge.executors.base"):
        assert cancel(SimpleNamespace(cancel_current_job=explode)) is True
    assert "device busy" in caplog.text


def test_async_cancel_reaches_the_loop_running_the_job() -> None:
    class Slow:
        def __init__(self) -> None:
            self.stop: asyncio.Event | None = None
            self.started = threading.Event()
            self.cancel_loop: asyncio.AbstractEventLoop | None = None
            self.run_loop: asyncio.AbstractEventLoop | None = None

        async def run(self, ir: Circuit, shots: int) -> dict[str, Any]:
            self.stop = asyncio.Event()
            self.run_loop = asyncio.get_running_loop()
            self.started.set()
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=5)
            except TimeoutError:
                raise ExecutorError("never cancelled") from None
            raise ExecutorError("cancelled")

        async def cancel_current_job(self) -> None:
            self.cancel_loop = asyncio.get_running_loop()
            assert self.stop is not None
            self.stop.set()  # only safe on the loop that owns the event

    executor = Slow()
    errors: list[str] = []

    def work() -> None:
        try:
            call_run(executor, CIRCUIT, 1)
        except ExecutorError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=work)
    started = time.perf_counter()
    thread.start()
    assert executor.started.wait(5)
    assert cancel(executor) is True
    thread.join(5)
    assert errors == ["cancelled"]
    assert time.perf_counter() - started < 4
    assert executor.cancel_loop is executor.run_loop
