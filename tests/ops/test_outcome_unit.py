"""The last-exit record: one masked line, kept 0600 in the state directory, read back as written."""

from __future__ import annotations

import json
from pathlib import Path

from coda_bridge.ops.outcome import (
    MAX_REASON_CHARS,
    UNEXPLAINED,
    forget_exit,
    last_exit,
    one_line,
    record_exit,
    record_start,
)

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJxcHUtMSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_a_reason_is_one_line_with_secrets_masked_and_a_json_log_line_gives_its_message() -> None:
    assert one_line("  error: cloud refused\n  connect (401)  ") == "error: cloud refused connect (401)"
    assert JWT not in one_line(f"error: refused Authorization: Bearer {JWT}")
    assert one_line(json.dumps({"time": "2026-12-06T20:53:30Z", "message": "executor cannot be built"})) == (
        "executor cannot be built"
    )
    assert len(one_line("x" * 5000)) == MAX_REASON_CHARS


def test_a_record_is_kept_private_read_back_and_replaced_by_the_next_start(tmp_path: Path) -> None:
    record_exit(tmp_path, 4242, 78, f"bridge exited with code 78: token {JWT} refused")
    record = last_exit(tmp_path)
    assert record is not None
    assert (record.pid, record.code) == (4242, 78)
    assert JWT not in record.reason
    assert record.explained
    assert record.as_dict()["stopped_at_utc"].endswith("Z")
    assert oct((tmp_path / "last-exit.json").stat().st_mode & 0o777) == oct(0o600)

    record_start(tmp_path, 5151)
    started = last_exit(tmp_path)
    assert started is not None
    assert (started.pid, started.code) == (5151, None)

    record_exit(tmp_path, 5151, 1, f"exited with code 1 {UNEXPLAINED}")
    unexplained = last_exit(tmp_path)
    assert unexplained is not None
    assert not unexplained.explained

    assert forget_exit(tmp_path) == tmp_path / "last-exit.json"
    assert last_exit(tmp_path) is None
    assert forget_exit(tmp_path) is None


def test_an_unreadable_record_is_no_record(tmp_path: Path) -> None:
    (tmp_path / "last-exit.json").write_text("{not json")
    assert last_exit(tmp_path) is None
