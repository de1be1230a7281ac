"""connect_node and apply_bundle with requests-mock: the retry policy of a start, and what a bundle changes.

PROTOCOL.md 1.1 and 1.2.  The cloud is a mock, the state directory a
temporary one, and the backoff is recorded by the client's ``sleep``.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import requests
import requests_mock as rm

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.signing import generate_private_key_pem, public_key_pem, verify_token
from coda_bridge.errors import AuthError, ConfigError, NodeError
from coda_bridge.identity.connect import apply_bundle, connect_node
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.settings import Settings

BASE = "https://cloud.test"
CONNECT_URL = f"{BASE}/api/internal/qpu/connect"
TOKEN = "cqn_node_77e1c2b9a0d4f3e6"
QPU = "qpu-unit"
KID = "qpu-unit-1710000000000"
FINGERPRINT = "host-7-123456789"


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_private_key_pem()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(webapp_url=BASE, state_dir=tmp_path / "state", node_machine_fingerprint=FINGERPRINT)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def bundle(key_pem: str | None, **changes: Any) -> dict[str, Any]:
    """A bundle as the cloud answers it; ``key_pem`` only on provisioning."""
    made: dict[str, Any] = {
        "qpu_id": QPU,
        "qpu_display_name": "Unit QPU",
        "native_gate_set": "iswap",
        "num_qubits": 7,
        "jwt_key_id": KID,
        "redis_url": "redis://jobs.cloud.test:6379/0",
        "cloud_base_url": BASE,
        "connection_mode": "https",
        "vpn": {"required": False, "interface_hint": None, "probe_targets": [], "client_profile_ovpn": None},
    }
    if key_pem:
        made["jwt_private_key"] = key_pem
    made.update(changes)
    return made


def connect(settings: Settings, sleeps: list[float], **kwargs: Any) -> Settings:
    client = CloudClient(settings, sleep=sleeps.append)
    try:
        return connect_node(settings, client=client, **kwargs)
    finally:
        client.close()


# -- the retry policy of a start --


def test_500_500_200_provisions_after_pauses_of_1_s_and_2_s(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a cloud that fails twice, then hands over the node's identity
    requests_mock.post(CONNECT_URL, [{"status_code": 500}, {"status_code": 500}, {"json": bundle(key_pem)}])

    # when the node starts with its token
    connected = connect(settings, sleeps, token=TOKEN)

    # then it retried after 1 s and 2 s, and took the third answer's identity
    assert sleeps == [1.0, 2.0]
    assert requests_mock.call_count == 3
    assert (connected.qpu_id, connected.jwt_key_id, connected.native_gate_set, connected.num_qubits) == (
        QPU,
        KID,
        "iswap",
        7,
    )
    assert connected.jwt_private_key_value == key_pem
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in requests_mock.request_history)


def test_a_401_is_not_retried_and_nothing_is_persisted(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a token the cloud has seen before
    requests_mock.post(CONNECT_URL, status_code=401, json={"error": "QPU node token has already been used"})

    # when the node starts with it
    with pytest.raises(NodeError) as caught:
        connect(settings, sleeps, token=TOKEN)

    # then it stopped at once with the cloud's message, wrote no credentials, and kept the token out
    assert requests_mock.call_count == 1
    assert sleeps == []
    assert str(caught.value) == "cloud refused connect (401): QPU node token has already been used"
    assert caught.value.status == 401
    paths = StatePaths(settings.state_dir)
    assert not paths.config.exists()
    assert not paths.private_key.exists()
    assert TOKEN not in str(caught.value)


def test_transport_errors_on_every_attempt_give_up_after_node_connect_retries(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given five attempts allowed and an unreachable cloud
    settings = Settings(webapp_url=BASE, state_dir=tmp_path / "state", node_connect_retries=5)
    requests_mock.post(CONNECT_URL, exc=requests.ConnectionError)

    # when the node starts
    with pytest.raises(NodeError, match=r"ConnectionError \(gave up after 5 attempts\)$"):
        connect(settings, sleeps, token=TOKEN)

    # then the pauses doubled from 1 s
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    assert requests_mock.call_count == 5


# -- what is sent --


def test_provisioning_sends_the_fingerprint_and_connectivity(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given an executor that knows its coupling edges
    requests_mock.post(CONNECT_URL, json=bundle(key_pem))

    # when the node provisions
    connect(settings, sleeps, token=TOKEN, connectivity=[(0, 1), (1, 2)])

    # then the body is the fingerprint and the edges as lists, nothing else
    assert requests_mock.last_request.json() == {
        "machine_fingerprint": FINGERPRINT,
        "connectivity": [[0, 1], [1, 2]],
    }


def test_a_start_without_a_token_reconnects_with_a_jwt_of_the_nodes_key(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a node with its own key and no token
    settings = Settings(
        webapp_url=BASE,
        state_dir=tmp_path / "state",
        node_machine_fingerprint=FINGERPRINT,
        jwt_private_key=key_pem,
        jwt_key_id=KID,
        qpu_id=QPU,
    )
    requests_mock.post(CONNECT_URL, json=bundle(None))

    # when it starts
    connected = connect(settings, sleeps)

    # then it sent a JWT (three parts) signed by that key, for that kid and sub, and kept its key
    bearer = requests_mock.last_request.headers["Authorization"].removeprefix("Bearer ")
    assert bearer.count(".") == 2
    claims = verify_token(bearer, public_key_pem(key_pem), expected_kid=KID, expected_sub=QPU)
    assert claims["iss"] == "coda"
    assert requests_mock.last_request.json() == {"machine_fingerprint": FINGERPRINT}
    assert connected.jwt_private_key_value == key_pem


def test_a_restart_with_the_used_token_still_set_reconnects_by_jwt(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a node provisioned with a token that is still in its environment
    requests_mock.post(CONNECT_URL, [{"json": bundle(key_pem)}, {"json": bundle(None)}])
    first = connect(settings, sleeps, token=TOKEN)

    # when it starts again with the same token
    connect(first, sleeps, token=TOKEN)

    # then the second connect used the node's JWT, not the spent token
    first_bearer, second_bearer = (r.headers["Authorization"] for r in requests_mock.request_history)
    assert first_bearer == f"Bearer {TOKEN}"
    verify_token(second_bearer.removeprefix("Bearer "), public_key_pem(key_pem), expected_sub=QPU)


def test_a_provisioning_bundle_without_a_key_fails_before_anything_is_written(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a cloud that forgets the key on provisioning
    requests_mock.post(CONNECT_URL, json=bundle(None))

    # when the node provisions
    with pytest.raises(NodeError, match="missing the required field 'jwt_private_key' after provisioning"):
        connect(settings, sleeps, token=TOKEN)

    # then no credential file exists
    assert not StatePaths(settings.state_dir).config.exists()


def test_a_successful_provisioning_persists_0600_files_with_the_bundle(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a cloud that provisions the node
    requests_mock.post(CONNECT_URL, json=bundle(key_pem))

    # when the node provisions
    connect(settings, sleeps, token=TOKEN)

    # then the config names the identity (not the key), the key is apart, both 0600
    paths = StatePaths(settings.state_dir)
    config = json.loads(paths.config.read_text())
    assert config["qpu_id"] == QPU
    assert config["redis_url"] == "redis://jobs.cloud.test:6379/0"
    assert config["vpn_required"] is False
    assert key_pem not in paths.config.read_text()
    assert paths.private_key.read_text() == key_pem
    for path in (paths.config, paths.private_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- apply_bundle: what the cloud decides and what the operator keeps --


def test_the_bundle_fills_the_cloud_fields_the_operator_left_alone(key_pem: str) -> None:
    # given settings that let the cloud move to its edge host, and a bundle with paths and a VPN block
    given = Settings(allowed_cloud_origins=["https://edge.cloud.test"])
    cloud = bundle(
        key_pem,
        connection_mode="vpn",
        cloud_base_url="https://edge.cloud.test",
        heartbeat_path="/v2/hb",
        webhook_path="/v2/wh",
        vpn={
            "required": True,
            "interface_hint": "tun7",
            "check_interval_sec": 20,
            "probe_targets": ["https://h/x"],
        },
    )

    # when it is applied
    applied = apply_bundle(given, cloud, fingerprint=FINGERPRINT)

    # then each of them comes from the bundle
    assert applied.webapp_url == "https://edge.cloud.test"
    assert (applied.heartbeat_path, applied.webhook_path) == ("/v2/hb", "/v2/wh")
    assert applied.connect_path == "/api/internal/qpu/connect"  # not in the bundle: unchanged
    assert applied.vpn_required is True
    assert applied.vpn_interface_hint == "tun7"
    assert applied.vpn_check_interval_sec == 20
    assert applied.vpn_probe_targets == ["https://h/x"]
    assert applied.node_machine_fingerprint == FINGERPRINT


def test_the_operators_own_values_win_but_identity_is_always_the_clouds(key_pem: str) -> None:
    # given an operator who set the Redis URL, the base URL, and a stale identity
    given = Settings(
        redis_url="redis://local:1/0", webapp_url="https://mine.test", qpu_id="old", num_qubits=3
    )

    # when a bundle that says otherwise is applied
    applied = apply_bundle(
        given, bundle(key_pem, cloud_base_url="https://edge.test"), fingerprint=FINGERPRINT
    )

    # then the operator's URLs stay, the identity is the cloud's
    assert applied.redis_url == "redis://local:1/0"
    assert applied.webapp_url == "https://mine.test"
    assert (applied.qpu_id, applied.num_qubits) == (QPU, 7)


def test_https_mode_turns_the_vpn_off_whatever_the_block_says(key_pem: str) -> None:
    cloud = bundle(key_pem, connection_mode="https", vpn={"required": True})
    assert apply_bundle(Settings(webapp_url=BASE), cloud, fingerprint=FINGERPRINT).vpn_required is False


def test_qpu_label_stands_in_for_the_display_name(key_pem: str) -> None:
    cloud = bundle(key_pem)
    del cloud["qpu_display_name"]
    cloud["qpu_label"] = "Fridge 2"
    applied = apply_bundle(Settings(webapp_url=BASE), cloud, fingerprint=FINGERPRINT)
    assert applied.qpu_display_name == "Fridge 2"


@pytest.mark.parametrize(
    "field", ["qpu_id", "native_gate_set", "num_qubits", "jwt_key_id", "qpu_display_name"]
)
def test_a_bundle_without_a_required_field_names_it(key_pem: str, field: str) -> None:
    cloud = bundle(key_pem)
    cloud[field] = ""
    with pytest.raises(NodeError, match=f"^cloud bundle is missing the required field '{field}'$"):
        apply_bundle(Settings(webapp_url=BASE), cloud, fingerprint=FINGERPRINT)


def test_a_bundle_with_a_bad_value_is_a_node_error_without_the_key(key_pem: str) -> None:
    # given a bundle whose gate set is not an IR target
    cloud = bundle(key_pem, native_gate_set="toffoli")

    # when it is applied
    with pytest.raises(NodeError, match=r"^cloud bundle has a bad value") as caught:
        apply_bundle(Settings(webapp_url=BASE), cloud, fingerprint=FINGERPRINT)

    # then the message does not carry the key that came with it
    assert key_pem.splitlines()[1] not in str(caught.value)


def test_a_garbled_key_from_the_cloud_fails_before_anything_is_written(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a cloud that sends a key that is not PEM
    requests_mock.post(
        CONNECT_URL, json=bundle("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    )

    # when the node provisions
    with pytest.raises(AuthError, match=r"is not a readable unencrypted PEM key") as caught:
        connect(settings, sleeps, token=TOKEN)

    # then the key is refused without being shown, and nothing was persisted
    assert "not a key" not in str(caught.value)
    assert not StatePaths(settings.state_dir).config.exists()


# -- the VPN around a connect (PROTOCOL.md 1.1: reconnect with a saved profile) --

PROFILE = "client\ndev tun\nremote vpn.cloud.test 1194\n"


class FakeVpn:
    """The VPN manager, faked: records each call in order, and what the connect request saw of them."""

    def __init__(self, *, restores: bool = True, refuse: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.restores = restores
        self.refuse = refuse

    def restore(self, settings: Settings) -> bool:
        self.calls.append("restore")
        if self.refuse is not None:
            raise self.refuse
        return self.restores

    def bring_up(self, settings: Settings, profile: str) -> bool:
        self.calls.append("bring_up")
        return False  # the tunnel restore started is already up

    def stop(self, settings: Settings) -> None:
        self.calls.append("stop")


def _provisioned(tmp_path: Path, requests_mock: rm.Mocker, key_pem: str, **vpn: Any) -> Settings:
    """A node that provisioned in VPN mode (its credentials persisted); the mock is then cleared."""
    block = {"required": True, "probe_targets": [], "client_profile_ovpn": PROFILE, **vpn}
    requests_mock.post(CONNECT_URL, json=bundle(key_pem, connection_mode="vpn", vpn=block))
    settings = Settings(webapp_url=BASE, state_dir=tmp_path / "state", node_machine_fingerprint=FINGERPRINT)
    provisioned = connect(settings, [], token=TOKEN, vpn=FakeVpn())
    requests_mock.reset_mock()
    return provisioned


def test_a_reconnect_with_a_saved_profile_brings_the_vpn_up_before_the_request(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a provisioned VPN-mode node, and a cloud that notes what the VPN manager had done by then
    node = _provisioned(tmp_path, requests_mock, key_pem)
    vpn = FakeVpn()
    seen_at_request: list[list[str]] = []

    def answer(request: Any, context: Any) -> dict[str, Any]:
        seen_at_request.append(list(vpn.calls))
        block = {"required": True, "probe_targets": [], "client_profile_ovpn": PROFILE}
        return bundle(None, connection_mode="vpn", vpn=block)

    requests_mock.post(CONNECT_URL, json=answer)

    # when it starts again (a reconnect)
    connect(node, sleeps, vpn=vpn)

    # then the saved tunnel was restored before the reconnect request went out, then the profile applied
    assert seen_at_request == [["restore"]]
    assert vpn.calls == ["restore", "bring_up"]


def test_a_required_vpn_without_a_saved_profile_stops_the_reconnect_before_any_request(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a provisioned VPN-mode node whose saved profile is gone (the manager refuses)
    node = _provisioned(tmp_path, requests_mock, key_pem)
    refusal = ConfigError("the VPN is required but no VPN profile was saved at x: provision again")

    # when it starts again
    with pytest.raises(ConfigError, match="provision again"):
        connect(node, sleeps, vpn=FakeVpn(refuse=refusal))

    # then nothing was sent to the cloud
    assert requests_mock.call_count == 0


def test_a_failed_reconnect_stops_the_tunnel_it_restored(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a provisioned VPN-mode node and a cloud that refuses the reconnect
    node = _provisioned(tmp_path, requests_mock, key_pem)
    requests_mock.post(CONNECT_URL, status_code=401, json={"error": "machine fingerprint does not match"})
    vpn = FakeVpn()

    # when it starts again
    with pytest.raises(NodeError, match="fingerprint"):
        connect(node, sleeps, vpn=vpn)

    # then the tunnel restored for the request was stopped again
    assert vpn.calls == ["restore", "stop"]


def test_a_start_with_a_token_or_without_saved_credentials_restores_nothing(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a direct JWT start (a key configured, nothing persisted) and a cloud in https mode
    requests_mock.post(CONNECT_URL, json=bundle(None))
    direct = Settings(
        webapp_url=BASE,
        state_dir=tmp_path / "state",
        node_machine_fingerprint=FINGERPRINT,
        jwt_private_key=key_pem,
        jwt_key_id=KID,
        qpu_id=QPU,
    )
    vpn = FakeVpn()

    # when it connects
    connect(direct, sleeps, vpn=vpn)

    # then no saved tunnel was looked for
    assert vpn.calls == []


@pytest.mark.parametrize("profile", [None, ""])
def test_a_vpn_required_answer_without_a_profile_is_an_error(
    settings: Settings, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str, profile: str | None
) -> None:
    # given a cloud that requires the VPN but hands over no profile
    block = {"required": True, "interface_hint": None, "probe_targets": [], "client_profile_ovpn": profile}
    requests_mock.post(CONNECT_URL, json=bundle(key_pem, connection_mode="vpn", vpn=block))
    vpn = FakeVpn()

    # when the node provisions with auto-VPN on
    with pytest.raises(NodeError, match=r"^the cloud requires the VPN but its connect answer has no VPN"):
        connect(settings, sleeps, token=TOKEN, vpn=vpn)

    # then nothing was persisted and no tunnel touched
    assert not StatePaths(settings.state_dir).config.exists()
    assert vpn.calls == []


def test_without_auto_vpn_a_profile_is_not_needed(
    tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float], key_pem: str
) -> None:
    # given a site that runs its tunnel itself, and a VPN-required answer without a profile
    block = {"required": True, "interface_hint": None, "probe_targets": [], "client_profile_ovpn": None}
    requests_mock.post(CONNECT_URL, json=bundle(key_pem, connection_mode="vpn", vpn=block))
    settings = Settings(
        webapp_url=BASE,
        state_dir=tmp_path / "state",
        node_machine_fingerprint=FINGERPRINT,
        node_auto_vpn=False,
    )

    # when it provisions, then it is connected with the VPN required
    assert connect(settings, sleeps, token=TOKEN).vpn_required is True
