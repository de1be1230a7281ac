"""The drain plan as data, and the one "results flushed" look both ``start`` modes use."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis

from coda_bridge.identity.credentials import ensure_state_dir, write_private
from coda_bridge.ops.drain import DRAIN_PLAN, ResultsFlushed, drain_stage, results_key_template

QPU = "qpu-drain"


def test_the_bridge_and_the_executors_stop_first_and_the_rest_once_results_are_flushed() -> None:
    # Given the parts of start (results.N: one per delivery process) and of --one-process
    parts = ["bridge", "jobs", "results.1", "results.2", "results", "control", "web"]

    # When each is placed in the plan
    stages = {part: drain_stage(part) for part in parts}

    # Then bridge and jobs stop first, everything else in the last stage, which waits for the results
    assert stages == {
        "bridge": 0,
        "jobs": 0,
        "results.1": 1,
        "results.2": 1,
        "results": 1,
        "control": 1,
        "web": 1,
    }
    assert not DRAIN_PLAN[0].after_results_flushed
    assert DRAIN_PLAN[-1].after_results_flushed


def test_results_flushed_is_false_while_a_result_waits_and_true_once_it_is_picked_up() -> None:
    # Given a broker whose results queue holds one message for this QPU
    client = fakeredis.FakeRedis()
    key = results_key_template().replace("\0", QPU)
    client.rpush(key, "message-id")
    flushed = ResultsFlushed(results_key_template(), QPU, client=client)

    # When the look runs, then once the delivery worker fetched it
    before = flushed()
    client.lpop(key)
    after = flushed()

    # Then it waits for it, and only for it
    assert (before, after) == (False, True)
    assert key == f"coda-bridge:{QPU}:dq:results"


def test_on_a_first_start_results_flushed_learns_the_qpu_from_the_persisted_identity(tmp_path: Path) -> None:
    # Given a first start (no QPU in the settings) whose bridge has since persisted its identity
    paths = ensure_state_dir(tmp_path / "state")
    client = fakeredis.FakeRedis()
    client.rpush(results_key_template().replace("\0", QPU), "message-id")
    flushed = ResultsFlushed(results_key_template(), None, client=client, state_dir=paths.root)
    assert flushed() is True  # nothing known yet: nothing to wait for
    write_private(paths.config, json.dumps({"qpu_id": QPU}))

    # When the look runs again
    # Then it reads that QPU's queue
    assert flushed() is False


def test_a_broken_look_never_holds_up_a_stop() -> None:
    # Given a broker nobody listens on
    flushed = ResultsFlushed(results_key_template(), QPU, broker_url="redis://127.0.0.1:1/0")

    # When the look runs, then it answers "flushed" rather than blocking the drain
    assert flushed() is True
