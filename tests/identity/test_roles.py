"""Each process waits for, and holds, only what its role needs (issue 16, item 2)."""

from __future__ import annotations

import os

import pytest

from coda_bridge import ConfigError
from coda_bridge.components import NodeComponents
from coda_bridge.identity.waiting import RoleError, missing_for_role, wait_for_identity, worker_role
from coda_bridge.settings import load_settings

PEM = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["dramatiq", "actors", "--processes", "1", "--queues", "jobs", "--threads", "1"], "jobs"),
        (["/x/dramatiq/__main__.py", "actors", "-Q", "results"], "results"),
        (["dramatiq", "actors", "--queues=control"], "control"),
        (["dramatiq", "actors", "--queues", "jobs", "results"], "node"),
        (["dramatiq", "actors"], "node"),
    ],
)
def test_a_workers_role_is_its_one_queue(argv: list[str], role: str) -> None:
    # given a dramatiq command line, when its role is read, then it is the one queue it consumes
    assert worker_role(argv) == role


def test_an_executor_needs_the_qpu_and_the_cloud_redis_never_the_key(clean_env: pytest.MonkeyPatch) -> None:
    # given a jobs worker's settings with the QPU and the cloud's Redis but no key
    clean_env.setenv("CODA_QPU_ID", "q-2")
    clean_env.setenv("CODA_REDIS_URL", "redis://cloud:6379/0")
    settings = load_settings()
    # then it lacks nothing, while a delivery worker lacks the key
    assert missing_for_role(settings, "jobs") == []
    assert missing_for_role(settings, "results") == ["jwt_key_id", "jwt_private_key"]


def test_a_jobs_worker_configured_by_hand_without_the_cloud_redis_refuses_at_once(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # given CODA_QPU_ID set by hand but no CODA_REDIS_URL (and no bridge on this host)
    clean_env.setenv("CODA_QPU_ID", "q-2")
    # when the jobs worker waits for its identity (no timeout: it would wait forever)
    with pytest.raises(RoleError, match="CODA_REDIS_URL not set") as raised:
        wait_for_identity(role="jobs")
    # then it refuses with EX_CONFIG, naming the variable
    assert raised.value.exit_code == 78


def test_a_jobs_worker_with_qpu_and_redis_starts_without_any_key(clean_env: pytest.MonkeyPatch) -> None:
    # given only what the docs table lists for a second-host executor
    clean_env.setenv("CODA_QPU_ID", "q-2")
    clean_env.setenv("CODA_REDIS_URL", "redis://cloud:6379/0")
    # when it loads its identity
    settings = wait_for_identity(role="jobs", timeout_sec=0)
    parts = NodeComponents(settings)
    # then it has it, holds no key and cannot sign
    assert (settings.qpu_id, settings.jwt_private_key) == ("q-2", None)
    assert not parts.can_sign
    with pytest.raises(ConfigError, match="no private key"):
        _ = parts.signer


def test_a_process_that_does_not_sign_drops_a_key_it_was_given(clean_env: pytest.MonkeyPatch) -> None:
    # given a full identity in the environment
    clean_env.setenv("CODA_QPU_ID", "q-2")
    clean_env.setenv("CODA_REDIS_URL", "redis://cloud:6379/0")
    clean_env.setenv("CODA_JWT_KEY_ID", "kid-1")
    clean_env.setenv("CODA_JWT_PRIVATE_KEY", PEM)
    # when the web app (which never signs) and a delivery worker (which does) load it
    web = wait_for_identity(role="web", timeout_sec=0)
    results = wait_for_identity(role="results", timeout_sec=0)
    # then only the delivery worker keeps the key
    assert web.jwt_private_key is None
    assert results.jwt_private_key_value == PEM
    assert not NodeComponents(web).can_sign
    assert not NodeComponents(results, signs=False).can_sign
    assert NodeComponents(results).can_sign


def test_a_process_waiting_for_the_bridge_times_out_rather_than_refusing(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # given nothing set by hand (the bridge of this host provisions the node)
    assert "CODA_QPU_ID" not in os.environ
    # when a jobs worker waits with a deadline, then it gives up saying to start the bridge (not a RoleError)
    with pytest.raises(ConfigError, match="start the bridge") as raised:
        wait_for_identity(role="jobs", timeout_sec=0)
    assert not isinstance(raised.value, RoleError)
