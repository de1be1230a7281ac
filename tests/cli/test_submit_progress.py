"""`submit --wait` shows the job's state on stderr as it changes (issue 16, item 5)."""

from __future__ import annotations

from typing import Any

import pytest

from coda_bridge import CodaError
from coda_bridge.cli import tools


class _Cloud:
    """A simulator client whose job moves on one state per look."""

    def __init__(self, states: list[str | None], result: dict[str, Any] | None) -> None:
        self.states = states
        self.final = result
        self.looks = 0

    def job(self, job_id: str) -> dict[str, Any]:
        state = self.states[min(self.looks, len(self.states) - 1)]
        self.looks += 1
        done = self.looks >= len(self.states) and self.final is not None
        return {"status": {"state": state} if state else {}, "result": self.final if done else None}


def test_each_state_is_shown_once_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools, "SUBMIT_POLL_SEC", 0)
    # given a job that is queued, then executing (seen twice), then completed with a result
    cloud = _Cloud([None, "queued", "executing", "executing", "completed"], {"status": "completed"})
    # when submit waits for it
    result = tools._wait_showing_progress(cloud, "j-1", timeout_sec=30)
    # then each state appears once, in order, on stderr only
    captured = capsys.readouterr()
    assert result == {"status": "completed"}
    assert captured.err.splitlines() == [
        "j-1: waiting for the node",
        "j-1: queued",
        "j-1: executing",
        "j-1: completed",
    ]
    assert captured.out == ""


def test_a_timeout_names_the_last_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "SUBMIT_POLL_SEC", 0)
    # given a job that never gets a result; when submit waits 0 s, then the error names its last state
    with pytest.raises(CodaError, match=r"after 0 s \(last state: queued\)"):
        tools._wait_showing_progress(_Cloud(["queued"], None), "j-2", timeout_sec=0)
