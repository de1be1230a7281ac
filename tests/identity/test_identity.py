"""Node identity against the local cloud simulator over real HTTP (PROTOCOL.md sections 1 and 2)."""

from __future__ import annotations

import logging
import stat
import uuid
from pathlib import Path

import pytest

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.devtools.devcloud import DevCloudClient
from coda_bridge.errors import ConfigError, NodeError
from coda_bridge.identity.connect import connect_node, load_node_settings
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.settings import Settings

#: Against the local cloud simulator, a real process (e2e: not in `make unit`).
pytestmark = pytest.mark.e2e


@pytest.fixture
def qpu(devcloud: DevCloudClient) -> str:
    qpu_id = f"qpu-{uuid.uuid4().hex[:10]}"
    devcloud.create_qpu(qpu_id, native_gate_set="cz", num_qubits=4, connection_mode="https")
    return qpu_id


@pytest.fixture
def node_env(clean_env: pytest.MonkeyPatch, devcloud: DevCloudClient) -> pytest.MonkeyPatch:
    clean_env.setenv("CODA_WEBAPP_URL", devcloud.base_url)
    clean_env.setenv("CODA_VPN_REQUIRED", "false")
    return clean_env


def _connect(token: str | None = None, **kwargs: object) -> Settings:
    settings = load_node_settings()
    return connect_node(settings, token=token, client=CloudClient(settings, sleep=lambda _: None), **kwargs)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_provisions_and_persists_then_reconnects_by_jwt(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str
) -> None:
    settings = _connect(devcloud.mint_token(qpu))

    assert settings.qpu_id == qpu
    assert settings.num_qubits == 4
    assert settings.jwt_private_key_value and "PRIVATE KEY" in settings.jwt_private_key_value
    paths = StatePaths(settings.state_dir)
    assert _mode(paths.root) == 0o700
    assert (_mode(paths.config), _mode(paths.private_key)) == (0o600, 0o600)

    again = _connect()

    assert again.qpu_id == qpu
    assert again.jwt_key_id == settings.jwt_key_id
    modes = [c["mode"] for c in devcloud.connects(qpu, accepted=True)]
    assert modes == ["provision", "reconnect"]


def test_a_used_token_surfaces_the_clouds_message(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str, tmp_path: Path
) -> None:
    token = devcloud.mint_token(qpu)
    _connect(token)
    node_env.setenv("CODA_STATE_DIR", str(tmp_path / "other-node"))

    with pytest.raises(NodeError, match="QPU node token has already been used") as caught:
        _connect(token)
    assert caught.value.status == 401
    assert token not in str(caught.value)


def test_a_restart_with_the_same_token_still_set_reconnects(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str
) -> None:
    token = devcloud.mint_token(qpu)
    node_env.setenv("CODA_NODE_TOKEN", token)
    _connect()

    _connect()

    assert [c["mode"] for c in devcloud.connects(qpu, accepted=True)] == ["provision", "reconnect"]


def test_500_500_then_200_succeeds_on_the_third_attempt(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str
) -> None:
    devcloud.set_fault("connect", 500, count=2, qpu_id=None)
    delays: list[float] = []
    settings = load_node_settings()

    connected = connect_node(
        settings, token=devcloud.mint_token(qpu), client=CloudClient(settings, sleep=delays.append)
    )

    assert connected.qpu_id == qpu
    assert delays == [1.0, 2.0]


def test_a_401_is_not_retried(node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str) -> None:
    delays: list[float] = []
    settings = load_node_settings()
    with pytest.raises(NodeError, match="401"):
        connect_node(settings, token="not-a-real-token", client=CloudClient(settings, sleep=delays.append))
    assert delays == []


def test_transport_errors_are_retried_then_fail_with_one_line(node_env: pytest.MonkeyPatch) -> None:
    node_env.setenv("CODA_WEBAPP_URL", "http://127.0.0.1:9")
    delays: list[float] = []
    settings = load_node_settings()
    with pytest.raises(NodeError, match="gave up after 3 attempts") as caught:
        connect_node(settings, token="tok", client=CloudClient(settings, sleep=delays.append))
    assert delays == [1.0, 2.0]
    assert "\n" not in str(caught.value)


def test_direct_jwt_start_reconnects_and_persists(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str, tmp_path: Path
) -> None:
    provisioned = _connect(devcloud.mint_token(qpu))
    node_env.setenv("CODA_STATE_DIR", str(tmp_path / "fresh"))
    node_env.setenv("CODA_JWT_PRIVATE_KEY", provisioned.jwt_private_key_value or "")
    node_env.setenv("CODA_JWT_KEY_ID", provisioned.jwt_key_id or "")
    node_env.setenv("CODA_QPU_ID", qpu)
    node_env.setenv("CODA_NODE_MACHINE_FINGERPRINT", provisioned.node_machine_fingerprint or "")

    settings = _connect()

    assert settings.qpu_id == qpu
    assert StatePaths(tmp_path / "fresh").config.exists()
    assert devcloud.connects(qpu, accepted=True)[-1]["mode"] == "reconnect"


def test_no_credentials_at_all_says_what_to_provide(node_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="CODA_NODE_TOKEN") as caught:
        _connect()
    assert "\n" not in str(caught.value)


def test_a_widened_state_file_is_refused_at_start(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str
) -> None:
    settings = _connect(devcloud.mint_token(qpu))
    StatePaths(settings.state_dir).config.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_node_settings()


def test_a_symlinked_key_is_refused_at_start(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str, tmp_path: Path
) -> None:
    settings = _connect(devcloud.mint_token(qpu))
    key = StatePaths(settings.state_dir).private_key
    moved = tmp_path / "key-elsewhere"
    key.replace(moved)
    key.symlink_to(moved)
    with pytest.raises(ConfigError, match="symlink"):
        load_node_settings()


def test_legacy_files_are_imported_once_at_start(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str, tmp_path: Path
) -> None:
    provisioned = _connect(devcloud.mint_token(qpu))
    legacy = tmp_path / "legacy-tmp"
    legacy.mkdir()
    paths = StatePaths(provisioned.state_dir)
    for name in ("coda.config", "coda-private-key"):
        (legacy / name).write_bytes((paths.root / name).read_bytes())
        (legacy / name).chmod(0o600)
    node_env.setenv("CODA_STATE_DIR", str(tmp_path / "new-home"))
    node_env.setattr("coda_bridge.identity.connect.legacy_dir", lambda: legacy)

    settings = load_node_settings()

    assert settings.qpu_id == qpu
    assert StatePaths(tmp_path / "new-home").config.exists()


def test_no_secret_reaches_logs_or_errors(
    node_env: pytest.MonkeyPatch,
    devcloud: DevCloudClient,
    qpu: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    token = devcloud.mint_token(qpu)
    with caplog.at_level(logging.DEBUG):
        settings = _connect(token)
        _connect()
        node_env.setenv("CODA_STATE_DIR", str(tmp_path / "other"))
        with pytest.raises(NodeError) as reused:
            _connect(token)
    key = settings.jwt_private_key_value or ""
    body = key.splitlines()[1]
    text = caplog.text + str(reused.value) + repr(settings)
    assert token not in text
    assert body not in text
    assert "eyJ" not in text


def test_every_connect_marks_the_time_it_finished(
    node_env: pytest.MonkeyPatch, devcloud: DevCloudClient, qpu: str
) -> None:
    import time

    from coda_bridge.identity.credentials import connected_since

    before = time.time()
    settings = _connect(devcloud.mint_token(qpu))
    paths = StatePaths(settings.state_dir)
    assert connected_since(paths, before)

    first = float(paths.connected.read_text())
    assert not connected_since(paths, first + 1)
    _connect()
    assert float(paths.connected.read_text()) > first
