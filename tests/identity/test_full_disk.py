"""A spent token is never lost to a full disk: a real tmpfs for the state directory, a real local cloud."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.devtools.devcloud import DevCloudClient
from coda_bridge.devtools.stack import wait_until
from coda_bridge.errors import ConfigError
from coda_bridge.identity.connect import connect_node, load_node_settings
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.settings import Settings

#: Against the local cloud simulator, a real process (e2e: not in `make unit`).
pytestmark = pytest.mark.e2e

#: Size of the tmpfs holding the state directory (the identity needs a few KiB, its room check 48).
TMPFS_SIZE = "64k"
#: How long the test lets the node wait for room before freeing some.
SAVE_WAIT_SEC = 30


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted at the end; skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with a ballast file; return it."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return ballast


@pytest.fixture
def qpu(devcloud: DevCloudClient) -> str:
    qpu_id = f"qpu-{uuid.uuid4().hex[:10]}"
    devcloud.create_qpu(qpu_id, native_gate_set="cz", num_qubits=4, connection_mode="https")
    return qpu_id


@pytest.fixture
def node_env(clean_env: pytest.MonkeyPatch, devcloud: DevCloudClient, tiny_disk: Path) -> Path:
    clean_env.setenv("CODA_WEBAPP_URL", devcloud.base_url)
    clean_env.setenv("CODA_VPN_REQUIRED", "false")
    state = tiny_disk / "state"
    clean_env.setenv("CODA_STATE_DIR", str(state))
    return state


class _DiskFillsAfterTheAnswer(CloudClient):
    """The cloud answers the connect, then the disk fills before the node saves what it got."""

    def __init__(self, settings: Settings, disk: Path) -> None:
        super().__init__(settings, sleep=lambda _: None)
        self.disk = disk

    def connect(self, bearer: str, body: Mapping[str, Any]) -> dict[str, Any]:
        bundle = super().connect(bearer, body)
        _fill(self.disk)
        return bundle


def test_a_full_disk_refuses_provisioning_before_the_token_is_spent(
    node_env: Path, tiny_disk: Path, devcloud: DevCloudClient, qpu: str
) -> None:
    # given: a state directory on a disk with no room left
    token = devcloud.mint_token(qpu)
    ballast = _fill(tiny_disk)
    settings = load_node_settings()

    # when: the node starts with its one-time token
    with pytest.raises(ConfigError) as refused:
        connect_node(settings, token=token, client=CloudClient(settings, sleep=lambda _: None))

    # then: one line names the directory and what to do, and the cloud never saw the token
    assert str(node_env) in str(refused.value)
    assert "free space" in str(refused.value)
    assert devcloud.connects(qpu) == []
    ballast.unlink()
    provisioned = connect_node(settings, token=token, client=CloudClient(settings, sleep=lambda _: None))
    assert provisioned.qpu_id == qpu


def test_an_identity_the_disk_did_not_take_is_kept_and_saved_once_there_is_room(
    node_env: Path, tiny_disk: Path, devcloud: DevCloudClient, qpu: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given: the disk fills between the cloud's answer and the save
    caplog.set_level(logging.INFO, logger="coda_bridge")
    settings = load_node_settings()
    client = _DiskFillsAfterTheAnswer(settings, tiny_disk)
    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            outcome["settings"] = connect_node(settings, token=devcloud.mint_token(qpu), client=client)
        except BaseException as exc:  # reported to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=start, daemon=True)
    thread.start()

    # when: the node says what to free, and the operator frees it
    def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot be saved" in r.getMessage()]

    wait_until(warned, SAVE_WAIT_SEC, "the warning that the identity cannot be saved")
    assert thread.is_alive(), outcome
    (tiny_disk / "ballast").unlink()
    thread.join(SAVE_WAIT_SEC)

    # then: one warning naming the directory, the identity saved, and the next start reconnects with it
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    (warning,) = warned()
    assert warning.levelno == logging.WARNING
    assert str(node_env) in warning.getMessage()
    assert "free space" in warning.getMessage()
    assert StatePaths(node_env).private_key.exists()
    again = load_node_settings()
    reconnected = connect_node(again, client=CloudClient(again, sleep=lambda _: None))
    assert reconnected.qpu_id == qpu == outcome["settings"].qpu_id
    assert [c["mode"] for c in devcloud.connects(qpu, accepted=True)] == ["provision", "reconnect"]
    assert os.stat(node_env).st_mode & 0o777 == 0o700
