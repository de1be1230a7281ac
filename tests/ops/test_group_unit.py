"""The process group's bookkeeping, without processes: what a spent token leaves behind."""

from __future__ import annotations

from typing import Any

import pytest

from coda_bridge.ops.group import ProcessGroup
from coda_bridge.ops.processes import ProcessSpec


def test_a_spent_token_is_gone_from_every_environment_once_the_node_has_an_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a group whose bridge was started with a one-time token, and a worker still waiting
    identity = {"ready": False}
    group = ProcessGroup(
        drain_timeout_sec=1, identity_ready=lambda: identity["ready"], spent_env=("CODA_NODE_TOKEN",)
    )
    spawned: list[dict[str, Any]] = []
    monkeypatch.setattr(group, "_spawn", lambda member: spawned.append(dict(member.env)))
    group.add(ProcessSpec("bridge", ("bridge",)), {"CODA_NODE_TOKEN": "one-time", "KEEP": "1"})
    group.add(ProcessSpec("jobs", ("jobs",)), {"CODA_NODE_TOKEN": "one-time", "KEEP": "1"}, deferred=True)

    # When the identity is not there yet, nothing changes and nothing starts
    group._start_deferred()
    assert spawned == []

    # When the node has an identity (the token is spent)
    identity["ready"] = True
    group._identity_checked = 0.0
    group._start_deferred()

    # Then the waiting worker starts without it, and a restart of the bridge would too
    assert spawned == [{"KEEP": "1"}]
    assert all("CODA_NODE_TOKEN" not in member.env for member in group._members.values())
