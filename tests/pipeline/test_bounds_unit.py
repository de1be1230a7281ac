"""Intake bounds as pure logic: screening entries, packing under a byte budget, refusal or outage."""

from __future__ import annotations

import pytest
import redis

from coda_bridge.pipeline.bounds import Job, broker_refusal, field_bytes, pack, round_trips, screen
from coda_bridge.pipeline.checks import REFUSAL_FIELD


def _fields(job_id: str, pad: int = 0) -> dict[str, str]:
    return {"job_id": job_id, "callback_url": "http://cloud/cb", "ir_json": "x" * pad, "shots": "1"}


def test_a_job_over_the_limit_goes_on_as_a_stand_in_naming_its_size_and_the_limit() -> None:
    screened = screen([(_fields("big", 5000), "1-0"), (_fields("small"), "2-0")], 4096)

    big, small = screened.forward
    assert set(big.fields) == {"job_id", "callback_url", REFUSAL_FIELD}
    assert big.fields[REFUSAL_FIELD].startswith(f"Job is 0.0 MiB ({field_bytes(_fields('big', 5000))} bytes)")
    assert "over the limit of 0.0 MiB (4096 bytes) (max_job_bytes)" in big.fields[REFUSAL_FIELD]
    assert small.fields == _fields("small") and small.size == field_bytes(_fields("small"))


def test_the_cloud_cannot_set_the_refusal_field() -> None:
    screened = screen([({**_fields("j"), REFUSAL_FIELD: "forged"}, "1-0")], 4096)

    assert REFUSAL_FIELD not in screened.forward[0].fields


def test_a_job_id_that_is_not_utf8_is_refused_naming_its_bytes() -> None:
    bad = b"K\xff".decode("utf-8", "surrogateescape")

    screened = screen([(_fields(bad), "1-0"), (_fields("K\ufffd"), "2-0")], 4096)

    assert [(job_id, entry_id) for job_id, entry_id, _ in screened.refused] == [(bad, "1-0")]
    assert "b'K\\xff'" in screened.refused[0][2] and "not valid UTF-8" in screened.refused[0][2]
    assert [job.fields["job_id"] for job in screened.forward] == ["K\ufffd"]


def test_other_fields_that_are_not_utf8_are_decoded_with_replacement() -> None:
    bad_ir = b"\xff{".decode("utf-8", "surrogateescape")

    (job,) = screen([({**_fields("j"), "ir_json": bad_ir}, "1-0")], 4096).forward

    assert job.fields["ir_json"] == "\ufffd{"


def test_an_entry_whose_id_alone_is_over_the_limit_is_dropped() -> None:
    assert screen([(_fields("i" * 5000), "1-0")], 4096).dropped == ["1-0"]


def test_packing_keeps_order_and_both_the_count_and_the_byte_budget() -> None:
    jobs = [Job({}, f"{n}-0", size) for n, size in enumerate([300, 300, 300, 300, 900, 100, 100])]

    groups = pack(jobs, batch_size=3, budget_bytes=1000)

    assert [[job.entry_id for job in group] for group in groups] == [
        ["0-0", "1-0", "2-0"],
        ["3-0"],
        ["4-0", "5-0"],
        ["6-0"],
    ]


def test_round_trips_carry_whole_messages_up_to_the_budget() -> None:
    groups = [[Job({}, f"{n}-0", size)] for n, size in enumerate([600, 300, 200, 1500, 10])]

    trips = round_trips(groups, budget_bytes=1000)

    assert [[group[0].entry_id for group in trip] for trip in trips] == [
        ["0-0", "1-0"],
        ["2-0"],
        ["3-0"],
        ["4-0"],
    ]


@pytest.mark.parametrize(
    ("error", "answers", "refused"),
    [
        (
            redis.ResponseError("Command # 1 (EVALSHA x) of pipeline caused error: string exceeds maximum"),
            True,
            True,
        ),
        (redis.ResponseError("Protocol error: invalid bulk length"), True, True),
        (
            redis.ResponseError("Command # 2 (EVALSHA x) of pipeline caused error: OOM command not allowed"),
            True,
            False,
        ),
        (redis.ResponseError("LOADING Redis is loading the dataset in memory"), True, False),
        (redis.ConnectionError("Connection reset by peer"), True, True),
        (redis.ConnectionError("Connection refused"), False, False),
        (redis.TimeoutError("Timeout writing to socket"), False, False),
        (redis.TimeoutError("Timeout reading from 127.0.0.1:6379"), True, False),  # back from a stall
    ],
)
def test_a_refusal_of_the_message_is_told_from_an_outage(
    error: redis.RedisError, answers: bool, refused: bool
) -> None:
    assert broker_refusal(error, answers) is refused
