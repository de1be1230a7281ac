"""Every message kind the node enqueues: built, read back, and called as the actors declare them."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.message import Message

from coda_bridge.queueing import queues
from coda_bridge.queueing.messages import (
    SPENT_OPTIONS,
    batch_message,
    carried_entries,
    delivery_message,
    delivery_of,
    job_message,
    jobs_of,
    replay_message,
    tick_message,
    tick_slot,
)

ACTORS = Path(__file__).resolve().parents[2] / "actors"
FIELDS = {"job_id": "j-1", "callback_url": "https://cloud/cb", "circuit": "OPENQASM 2.0;"}


def _actor_signatures() -> dict[str, inspect.Signature]:
    """Each actor's signature by actor name, read from actors/ without importing it (import needs a node)."""
    found = {}
    for path in ACTORS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "dramatiq.actor":
                    name = next(k.value for k in decorator.keywords if k.arg == "actor_name")
                    stub: dict[str, Any] = {}
                    exec(
                        f"def stub({ast.unparse(node.args)}): pass", {}, stub
                    )  # names only, no annotations run
                    found[getattr(queues, ast.unparse(name))] = inspect.signature(stub["stub"])
    return found


def _every_kind() -> list[dramatiq.Message[Any]]:
    return [
        job_message(FIELDS, "1-0"),
        batch_message([(FIELDS, "1-0"), ({**FIELDS, "job_id": "j-2"}, "2-0")]),
        delivery_message("j-1", "https://cloud/cb", "1-0"),
        delivery_message("j-1", "https://cloud/cb", None),
        tick_message(queues.HEARTBEAT_ACTOR, 60.0, 120.0),
        tick_message(queues.VPN_CHECK_ACTOR, 60.0, 120.0),
    ]


@pytest.mark.parametrize("message", _every_kind(), ids=lambda m: m.actor_name)
def test_each_message_calls_its_actor_as_the_actor_is_declared(message: dramatiq.Message[Any]) -> None:
    # Given the actors' signatures as declared in actors/
    signatures = _actor_signatures()

    # When the message goes through dramatiq's encoding, as a worker receives it
    received = Message.decode(message.encode())

    # Then its arguments bind to its actor's parameters, on the queue the actor reads
    signatures[received.actor_name].bind(*received.args, **received.kwargs)
    assert received.queue_name in queues.QUEUES


def test_the_readers_find_the_entries_and_jobs_each_message_carries() -> None:
    job, batch, delivery, delivery_without_entry, tick, _ = (
        Message.decode(m.encode()) for m in _every_kind()
    )

    assert carried_entries(job) == [("1-0", "j-1")]
    assert carried_entries(batch) == [("1-0", "j-1"), ("2-0", "j-2")]
    assert carried_entries(delivery) == [("1-0", "j-1")]
    assert carried_entries(delivery_without_entry) == []
    assert carried_entries(tick) == []
    assert jobs_of(batch) == ("j-1,j-2", None)
    assert jobs_of(job) == ("j-1", "https://cloud/cb")
    assert delivery_of(delivery) == ("j-1", "https://cloud/cb")
    assert delivery_of(delivery.asdict()) == ("j-1", "https://cloud/cb")  # as dead_lettered receives it
    assert tick_slot(tick) == (60.0, 120.0)


@pytest.mark.parametrize(
    "args",
    [(), ("not fields",), ({"job_id": "j"},), ([["not", "pairs", "x"]],), (None, None)],
)
def test_a_message_of_another_shape_carries_nothing_and_raises_nothing(args: tuple[Any, ...]) -> None:
    # Given messages whose arguments are not the shape their actor takes
    for actor in (queues.EXECUTE_ACTOR, queues.EXECUTE_BATCH_ACTOR, queues.DELIVER_ACTOR):
        odd: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queues.JOBS_QUEUE, actor_name=actor, args=args, kwargs={}, options={}
        )
        # Then the readers answer "nothing" instead of failing the enqueue or the listing
        assert carried_entries(odd) == []
        assert jobs_of(odd)[0] is None


def test_a_replay_keeps_the_call_and_drops_what_the_dead_attempt_spent() -> None:
    # Given a dead delivery with dramatiq's and the broker's options of its last attempt
    dead = delivery_message("j-1", "https://cloud/cb", "1-0").copy(
        options={"retries": 9, "traceback": "boom", "redis_message_id": "r-1", "max_retries": 3}
    )

    # When it is replayed
    fresh = replay_message(dead, queues.RESULTS_QUEUE)

    # Then the call is the same, a fresh message with a fresh retry count
    assert (fresh.actor_name, fresh.args, fresh.queue_name) == (
        dead.actor_name,
        dead.args,
        queues.RESULTS_QUEUE,
    )
    assert fresh.options == {"max_retries": 3}
    assert fresh.message_id != dead.message_id
    assert set(SPENT_OPTIONS) == {"retries", "traceback", "redis_message_id"}
