"""Key names: the cloud's are fixed by PROTOCOL.md 4; the node's own live under coda-bridge:{qpu_id}:."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from urllib.parse import unquote

import pytest

from coda_bridge.cloud.redis_keys import cancel_key, group_name, status_key, stream_key
from coda_bridge.queueing.redis_broker import broker_namespace
from coda_bridge.state.broker_keys import (
    bridge_key,
    claim_key,
    dead_messages_key,
    dead_queue_key,
    delivery_lease_key,
    device_key,
    dramatiq_counters_key,
    dramatiq_live_key,
    entry_key,
    heartbeats_key,
    histogram_key,
    job_key,
    key_part,
    messages_key,
    node_key,
    node_pattern,
    pause_key,
    process_key,
    process_pattern,
    queue_key,
    ready_index_key,
    ready_key,
    ready_pattern,
    tick_key,
    wake_key,
    window_key,
)


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


# -- every family, hostile ids (issue 20.3) --

#: Ids chosen to look like key structure: another family's name, separators, hash tags, globs, controls.
HOSTILE_IDS = [
    "K",
    "K:delivering",
    "a}b",
    "{a}",
    "*",
    "?",
    "[ab]",
    "line\nbreak",
    "job:x",
    "x:node:pause",
    "%2A",
]

#: Every builder of the node's own namespace that takes an id, by family.
ID_FAMILIES: dict[str, Callable[[str, str], str]] = {
    "claim": claim_key,
    "job": job_key,
    "delivering": delivery_lease_key,
    "entry": entry_key,
    "tick": lambda q, i: tick_key(q, i, 1),
    "node": node_key,
    "histogram": histogram_key,
    "inprogress": dramatiq_live_key,
    "process": lambda q, i: process_key(q, i, i, i),
    "ready": lambda q, i: ready_key(q, i, i),
    "bridge": bridge_key,
}
#: The fixed keys of a QPU (no id of their own).
FIXED: list[Callable[[str], str]] = [
    pause_key,
    device_key,
    lambda q: window_key(q, 1_800_000_000),
    dramatiq_counters_key,
    broker_namespace,
    ready_index_key,
]


def _all_keys(qpu_id: str) -> dict[str, tuple[str, str]]:
    """Every key the builders make for ``qpu_id`` and the hostile ids, with the (family, id) that made it."""
    made: dict[str, tuple[str, str]] = {}
    for family, maker in ID_FAMILIES.items():
        for job_id in HOSTILE_IDS:
            key = maker(qpu_id, job_id)
            assert key not in made, f"{family}/{job_id!r} and {made.get(key)} share {key!r}"
            made[key] = (family, job_id)
    for index, fixed in enumerate(FIXED):
        key = fixed(qpu_id)
        assert key not in made, f"a fixed key {key!r} is also {made.get(key)}"
        made[key] = ("fixed", str(index))
    return made


@pytest.mark.parametrize("qpu_id", ["qpu-1", *HOSTILE_IDS])
def test_no_hostile_id_makes_another_ids_key_or_another_familys(qpu_id: str) -> None:
    # Given every key family built for hostile ids
    made = _all_keys(qpu_id)

    # Then each (family, id) pair has its own key, with no separator, brace, glob or control from an id
    assert len(made) == len(ID_FAMILIES) * len(HOSTILE_IDS) + len(FIXED)
    for key in made:
        assert not set(key) & set("{}*?[]\n"), key
        assert key.startswith(f"coda-bridge:{key_part(qpu_id)}:")


def test_two_hostile_qpus_never_share_a_key() -> None:
    # Given QPU ids where one spells another's key structure ("K" and "K:job:x")
    keys = {qpu: set(_all_keys(qpu)) for qpu in ["K", "K:delivering", "K:job:x", "K:node", "a}b", "*"]}

    # Then no two QPUs share any key
    for qpu, own in keys.items():
        for other, theirs in keys.items():
            assert other == qpu or not own & theirs, (qpu, other, own & theirs)


@pytest.mark.parametrize("qpu_id", ["qpu-1", "*", "q[1]", "a}b"])
def test_a_scan_pattern_matches_its_own_family_of_its_own_qpu_only(qpu_id: str) -> None:
    # Given every key of this QPU and of a QPU whose id a glob in ours would match
    own, other = _all_keys(qpu_id), _all_keys(f"{qpu_id}x")

    # Then the registry's patterns match exactly this QPU's process and ready keys
    for pattern, family in ((process_pattern(qpu_id), "process"), (ready_pattern(qpu_id), "ready")):
        matched = {key for key in [*own, *other] if fnmatch.fnmatchcase(key, pattern)}
        assert matched == {key for key, (fam, _) in own.items() if fam == family}
    assert all(fnmatch.fnmatchcase(key, node_pattern(qpu_id)) for key in own)
    assert not any(fnmatch.fnmatchcase(key, node_pattern(qpu_id)) for key in other)


def test_the_nodes_namespace_keeps_the_names_it_had() -> None:
    # Then a deployed broker's records are found again after the upgrade (readable ids are unchanged)
    assert pause_key("q") == "coda-bridge:q:node:pause"
    assert device_key("q") == "coda-bridge:q:node:device"
    assert window_key("q", 7) == "coda-bridge:q:node:window:7"
    assert node_key("q", "running") == "coda-bridge:q:node:running"
    assert histogram_key("q", "coda_job_seconds") == "coda-bridge:q:node:histogram:coda_job_seconds"
    assert dramatiq_counters_key("q") == "coda-bridge:q:node:dramatiq:counters"
    assert dramatiq_live_key("q", "b-1") == "coda-bridge:q:node:dramatiq:inprogress:b-1"
    assert process_key("q", "host", 12, "jobs") == "coda-bridge:q:process:host:12:jobs"
    assert ready_key("q", "host", 12) == "coda-bridge:q:ready:host:12"
    assert ready_index_key("q") == "coda-bridge:q:node:ready_workers"
    assert bridge_key("q", "host-1") == "coda-bridge:q:bridge:host-1"
    assert entry_key("q", "1-0") == "coda-bridge:q:entry:1-0"


def test_dramatiqs_keys_are_spelled_as_dramatiq_spells_them() -> None:
    namespace = broker_namespace("q")
    assert queue_key(namespace, "jobs") == "coda-bridge:q:dq:jobs"
    assert messages_key(namespace, "jobs") == "coda-bridge:q:dq:jobs.msgs"
    assert dead_queue_key(namespace, "results") == "coda-bridge:q:dq:results.XQ"
    assert dead_messages_key(namespace, "results") == "coda-bridge:q:dq:results.XQ.msgs"
    assert wake_key(namespace, "jobs") == "coda-bridge:q:dq:jobs.wake"
    assert heartbeats_key(namespace) == "coda-bridge:q:dq:__heartbeats__"
