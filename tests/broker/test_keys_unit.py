"""Key names: the cloud's are fixed by PROTOCOL.md 4; the node's own live under coda-bridge:{qpu_id}:."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from coda_bridge.broker.keys import claim_key, delivery_lease_key, job_key, key_part, tick_key
from coda_bridge.broker.redis_broker import broker_namespace
from coda_bridge.cloud.keys import cancel_key, group_name, status_key, stream_key


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (stream_key("my-qpu"), "qpu:my-qpu:jobs"),
        (group_name("my-qpu"), "qpu:my-qpu:workers"),
        (status_key("j-1"), "qpu:job:j-1:status"),
        (cancel_key("j-1"), "qpu:job:cancelled:j-1"),
    ],
)
def test_the_clouds_keys_are_spelled_as_the_protocol_says(made: str, expected: str) -> None:
    assert made == expected


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (claim_key("my-qpu", "j-1"), "coda-bridge:my-qpu:claim:j-1"),
        (job_key("my-qpu", "j-1"), "coda-bridge:my-qpu:job:j-1"),
        (tick_key("my-qpu", "heartbeat", 60_000_000), "coda-bridge:my-qpu:tick:heartbeat:60000000"),
        (broker_namespace("my-qpu"), "coda-bridge:my-qpu:dq"),
    ],
)
def test_the_nodes_own_keys_are_namespaced_by_qpu(made: str, expected: str) -> None:
    assert made == expected


def test_two_qpus_never_share_a_key() -> None:
    makers = [
        lambda q: claim_key(q, "j"),
        lambda q: job_key(q, "j"),
        lambda q: tick_key(q, "heartbeat", 1),
        broker_namespace,
    ]
    assert not {m("qpu-a") for m in makers} & {m("qpu-b") for m in makers}


ODD_IDS = [
    "K",
    "K:delivering",
    "a{b}",
    "*",
    "50%",
    "%25",
    "line\nbreak",
    "nul\x00",
    "é",
    "\ufffd",
    "x" * 1000,
]


def test_a_job_id_never_names_another_ids_key_or_another_family() -> None:
    # Given ids that look like key structure (separators, hash tags, globs, escapes)
    keys = [maker("q", job_id) for maker in (claim_key, job_key, delivery_lease_key) for job_id in ODD_IDS]

    # Then every (family, id) pair has a key of its own
    assert len(set(keys)) == len(keys)
    assert delivery_lease_key("q", "K") != job_key("q", "K:delivering")


@pytest.mark.parametrize("job_id", ODD_IDS)
def test_an_id_in_a_key_is_one_segment_and_decodes_back(job_id: str) -> None:
    part = key_part(job_id)
    assert not set(part) & set(":{}*\n\x00")
    assert unquote(part) == job_id


def test_readable_ids_stay_readable() -> None:
    assert job_key("q", "j-1_2.3~uuid") == "coda-bridge:q:job:j-1_2.3~uuid"
