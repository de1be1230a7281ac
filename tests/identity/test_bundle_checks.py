"""A connect answer is checked before anything of it is applied (PROTOCOL.md 1.1, README: Guarantees).

Table-driven, one table per class of field: the base URL, the API paths,
the key, the VPN block, the Redis URL.  Each hostile value is refused with
a NodeError (AuthError for keys) naming the field, never a secret; each
harmless neighbour still applies.  The live versions (a listener playing
the cloud, attacker listeners) are in tests/cloud/test_hostile_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.signing import generate_private_key_pem
from coda_bridge.errors import AuthError, ConfigError, NodeError
from coda_bridge.identity.connect import (
    MAX_VPN_PROFILE_CHARS,
    apply_bundle,
    check_bundle,
    connect_node,
)
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.settings import Settings, load_settings

BASE = "https://cloud.test"
TOKEN = "cqn_node_bundle_91c3"
FINGERPRINT = "host-9-1"


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_private_key_pem()


@pytest.fixture
def node(clean_env: pytest.MonkeyPatch) -> Settings:
    """A node that connected to BASE before: webapp_url is persisted state, not the operator's."""
    return load_settings(persisted={"webapp_url": BASE})


def bundle(**changes: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "qpu_id": "qpu-b",
        "qpu_display_name": "Bundle QPU",
        "native_gate_set": "cz",
        "num_qubits": 5,
        "jwt_key_id": "qpu-b-1",
        "redis_url": "rediss://jobs.cloud.test:6380/0",
        "connection_mode": "vpn",
        "vpn": {"required": True, "interface_hint": None, "probe_targets": [], "client_profile_ovpn": None},
    }
    made.update(changes)
    return made


def _pem(key: Any) -> str:
    text: str = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return text


# -- the base URL --

#: Base URLs a bundle may not move a node on https://cloud.test to, and what the refusal says.
HOSTILE_BASES = [
    ("https://evil.test", "moves the cloud from https://cloud.test:443 to https://evil.test:443"),
    ("http://cloud.test", "to http://cloud.test:80"),
    ("https://cloud.test:8443", "to https://cloud.test:8443"),
    ("https://api.cloud.test", "to https://api.cloud.test:443"),
    ("https://cloud.test.evil.test/api", "to https://cloud.test.evil.test:443"),
    ("HTTP://CLOUD.TEST:443", "to http://cloud.test:443"),
    ("https://evil.test\\@cloud.test", "URL has a backslash"),
    ("https://cloud.test@evil.test", "URL has userinfo"),
    ("https://%63loud.test", "percent-encoded"),
    ("https://cloud.test/?next=https://evil.test", "query"),
    ("https://2130706433", "numeric"),
    ("cloud.test", "not of the form"),
    (["https://cloud.test"], "not a string"),
]


@pytest.mark.parametrize(("base", "named"), HOSTILE_BASES)
@pytest.mark.parametrize("field", ["cloud_base_url", "webapp_url"])
def test_a_bundle_that_moves_the_cloud_is_refused(
    node: Settings, key_pem: str, field: str, base: Any, named: str
) -> None:
    # given a bundle that says the cloud lives elsewhere
    cloud = bundle(jwt_private_key=key_pem, **{field: base})

    # when it is applied
    with pytest.raises(NodeError) as caught:
        apply_bundle(node, cloud, fingerprint=FINGERPRINT)

    # then it is refused, naming the field and what was wrong, without the key
    assert field in str(caught.value)
    assert named in str(caught.value)
    assert key_pem.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(
    "base",
    ["https://cloud.test", "https://cloud.test/", "https://CLOUD.test:443/v2", "https://cloud.test/api/"],
)
def test_a_base_on_the_same_origin_is_applied(node: Settings, base: str) -> None:
    applied = apply_bundle(node, bundle(cloud_base_url=base), fingerprint=FINGERPRINT)
    assert applied.webapp_url == base


@pytest.mark.parametrize(
    ("allowed", "base"),
    [
        (["https://edge.cloud.test"], "https://edge.cloud.test"),
        (["edge.cloud.test"], "https://edge.cloud.test/api"),
        (["https://cloud.test:8443"], "https://cloud.test:8443"),
        (["http://127.0.0.1:9000", "https://other.test"], "http://127.0.0.1:9000"),
    ],
)
def test_a_move_to_an_origin_the_operator_allowed_is_applied(
    clean_env: pytest.MonkeyPatch, allowed: list[str], base: str
) -> None:
    # given an operator who lists the cloud's new home
    node = load_settings(persisted={"webapp_url": BASE}, overrides={"allowed_cloud_origins": allowed})

    # when a bundle moves there
    applied = apply_bundle(node, bundle(cloud_base_url=base), fingerprint=FINGERPRINT)

    # then the node follows
    assert applied.webapp_url == base


def test_the_operators_own_webapp_url_wins_and_the_bundles_is_not_used() -> None:
    # given an operator who set webapp_url (a local gateway, say)
    node = Settings(webapp_url="https://gateway.site.test")

    # when the cloud names its public address
    applied = apply_bundle(node, bundle(cloud_base_url=BASE), fingerprint=FINGERPRINT)

    # then the operator's stays, and the bundle's, never applied, is no reason to refuse
    assert applied.webapp_url == "https://gateway.site.test"


# -- the API paths --

#: Path overrides that are no plain path on the cloud's origin.
HOSTILE_PATHS = [
    "https://evil.test/hb",
    "http://cloud.test/hb",
    "//evil.test/hb",
    "///evil.test/hb",
    "/hb\\@evil.test",
    "/hb?next=x",
    "/hb#x",
    "/h b",
    "/hb\n",
    "/" + "a" * 600,
    "/h\u00e9",
    17,
]


@pytest.mark.parametrize("value", HOSTILE_PATHS)
@pytest.mark.parametrize("field", ["connect_path", "register_path", "heartbeat_path", "webhook_path"])
def test_a_path_override_that_is_no_plain_path_is_refused(node: Settings, field: str, value: Any) -> None:
    with pytest.raises(NodeError, match=f"^cloud bundle has a bad {field}: not a path"):
        apply_bundle(node, bundle(**{field: value}), fingerprint=FINGERPRINT)


@pytest.mark.parametrize(
    "value", ["/v2/hb", "v2/hb", "/api/internal/qpu/heartbeat", "/a/b:c/@d/%7e", "/~x/-_.!"]
)
def test_a_plain_path_override_is_applied(node: Settings, value: str) -> None:
    applied = apply_bundle(node, bundle(heartbeat_path=value), fingerprint=FINGERPRINT)
    assert applied.heartbeat_path == value


def test_paths_are_checked_against_the_base_the_bundle_moves_to(clean_env: pytest.MonkeyPatch) -> None:
    # given a move the operator allows, with paths
    node = load_settings(persisted={"webapp_url": BASE}, overrides={"allowed_cloud_origins": ["edge.test"]})
    cloud = bundle(cloud_base_url="https://edge.test", heartbeat_path="/v3/hb")

    # when it is applied
    applied = apply_bundle(node, cloud, fingerprint=FINGERPRINT)

    # then heartbeats go to the new origin's path
    assert applied.url(applied.heartbeat_path) == "https://edge.test/v3/hb"


def test_an_operators_path_wins_and_the_bundles_is_not_checked() -> None:
    node = Settings(webapp_url=BASE, heartbeat_path="/site/hb")
    applied = apply_bundle(node, bundle(heartbeat_path="//evil.test/hb"), fingerprint=FINGERPRINT)
    assert applied.heartbeat_path == "/site/hb"


# -- the key --


def _weak_keys() -> list[tuple[str, str, str]]:
    """(case, PEM, what the refusal says); generated once per module."""
    return [
        ("RSA-1024", _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "RSA-1024"),
        ("RSA-2047", _pem(rsa.generate_private_key(public_exponent=65537, key_size=2047)), "RSA-2047"),
        ("EC P-256", _pem(ec.generate_private_key(ec.SECP256R1())), "not an RSA key"),
        ("DSA-2048", _pem(dsa.generate_private_key(key_size=2048)), "not an RSA key"),
        (
            "garbled",
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "not a readable",
        ),
    ]


@pytest.fixture(scope="module")
def weak_keys() -> list[tuple[str, str, str]]:
    return _weak_keys()


@pytest.mark.parametrize("index", range(5))
def test_a_key_that_is_not_rsa_of_at_least_2048_bits_is_refused(
    node: Settings, weak_keys: list[tuple[str, str, str]], index: int
) -> None:
    # given a bundle with a weak, foreign or garbled key
    case, pem, named = weak_keys[index]

    # when it is applied
    with pytest.raises(AuthError, match=named) as caught:
        apply_bundle(node, bundle(jwt_private_key=pem), fingerprint=FINGERPRINT)

    # then it is refused without showing the key
    assert pem.splitlines()[1] not in str(caught.value), case


@pytest.mark.parametrize("pem", [12345, ["-----BEGIN PRIVATE KEY-----"], "x" * 20_000])
def test_a_key_that_is_not_a_pem_text_of_sane_size_is_refused(node: Settings, pem: Any) -> None:
    with pytest.raises(AuthError, match="not a PEM text of at most 16384 characters"):
        apply_bundle(node, bundle(jwt_private_key=pem), fingerprint=FINGERPRINT)


def test_an_rsa_3072_key_is_applied(node: Settings) -> None:
    pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=3072))
    applied = apply_bundle(node, bundle(jwt_private_key=pem), fingerprint=FINGERPRINT)
    assert applied.jwt_private_key_value == pem


# -- the VPN block --

#: VPN blocks with one hostile field, and the field the refusal names.
HOSTILE_VPN = [
    ({"check_interval_sec": 1e-9}, "vpn.check_interval_sec: 1e-09 is not a number of seconds from 1 to 3600"),
    ({"check_interval_sec": 0}, "vpn.check_interval_sec: 0 is not"),
    ({"check_interval_sec": -10}, "vpn.check_interval_sec: -10 is not"),
    ({"check_interval_sec": 0.999}, "vpn.check_interval_sec: 0.999 is not"),
    ({"check_interval_sec": 3601}, "vpn.check_interval_sec: 3601 is not"),
    ({"check_interval_sec": 1e308}, "vpn.check_interval_sec"),
    ({"check_interval_sec": float("nan")}, "vpn.check_interval_sec: nan is not"),
    ({"check_interval_sec": float("inf")}, "vpn.check_interval_sec: inf is not"),
    ({"check_interval_sec": True}, "vpn.check_interval_sec: True is not"),
    ({"check_interval_sec": "10"}, "vpn.check_interval_sec: a str is not"),
    (
        {"client_profile_ovpn": "x" * (MAX_VPN_PROFILE_CHARS + 1)},
        "vpn.client_profile_ovpn: 131073 characters",
    ),
    (
        {"client_profile_ovpn": "x" * 5_000_000},
        "vpn.client_profile_ovpn: 5000000 characters, more than 131072",
    ),
    ({"client_profile_ovpn": {"remote": "evil.test"}}, "vpn.client_profile_ovpn: not a text"),
    ({"client_profile_ovpn": ["client"]}, "vpn.client_profile_ovpn: not a text"),
    ({"required": "false"}, "vpn.required: not true or false"),
    ({"required": 0}, "vpn.required: not true or false"),
    ({"interface_hint": "tun0; reboot"}, "vpn.interface_hint"),
    ({"interface_hint": "../../etc/passwd"}, "vpn.interface_hint"),
    ({"interface_hint": "tun0123456789abcd"}, "vpn.interface_hint"),
    ({"interface_hint": 7}, "vpn.interface_hint"),
    ({"probe_targets": "https://evil.test/"}, "vpn.probe_targets"),
    ({"probe_targets": [f"https://p{i}.test/" for i in range(17)]}, "vpn.probe_targets"),
    ({"probe_targets": [{"url": "https://p.test/"}]}, "vpn.probe_targets"),
    ({"probe_targets": ["https://p.test/" + "a" * 3000]}, "vpn.probe_targets"),
]


@pytest.mark.parametrize(("changes", "named"), HOSTILE_VPN, ids=[n.split(":")[0] for _, n in HOSTILE_VPN])
def test_a_hostile_vpn_block_is_refused_naming_the_field(
    node: Settings, changes: dict[str, Any], named: str
) -> None:
    # given a VPN block with one hostile field
    vpn = {"required": True, "interface_hint": None, "probe_targets": [], **changes}

    # when it is applied
    with pytest.raises(NodeError) as caught:
        apply_bundle(node, bundle(vpn=vpn), fingerprint=FINGERPRINT)

    # then the refusal names the field, and never quotes a profile
    assert named in str(caught.value)
    assert "xxxx" not in str(caught.value)


@pytest.mark.parametrize("vpn", ["required", ["required"], 1])
def test_a_vpn_block_that_is_not_an_object_is_refused(node: Settings, vpn: Any) -> None:
    with pytest.raises(NodeError, match=r"^cloud bundle has a bad vpn: not an object$"):
        apply_bundle(node, bundle(vpn=vpn), fingerprint=FINGERPRINT)


@pytest.mark.parametrize(
    ("changes", "setting", "value"),
    [
        ({"check_interval_sec": 1}, "vpn_check_interval_sec", 1),
        ({"check_interval_sec": 3600}, "vpn_check_interval_sec", 3600),
        ({"check_interval_sec": 12.5}, "vpn_check_interval_sec", 12.5),
        ({"interface_hint": "tun7"}, "vpn_interface_hint", "tun7"),
        ({"interface_hint": "wg-coda.0"}, "vpn_interface_hint", "wg-coda.0"),
        (
            {"probe_targets": ["https://p.test/health"] * 16},
            "vpn_probe_targets",
            ["https://p.test/health"] * 16,
        ),
        ({"required": False}, "vpn_required", False),
    ],
)
def test_a_sane_vpn_block_is_applied(
    node: Settings, changes: dict[str, Any], setting: str, value: Any
) -> None:
    vpn = {"required": True, "interface_hint": None, "probe_targets": [], **changes}
    applied = apply_bundle(node, bundle(vpn=vpn), fingerprint=FINGERPRINT)
    assert getattr(applied, setting) == value


def test_a_profile_at_the_cap_passes_the_check(node: Settings) -> None:
    vpn = {"required": True, "client_profile_ovpn": "#" * MAX_VPN_PROFILE_CHARS}
    check_bundle(node, bundle(vpn=vpn))  # no error: the cap is inclusive


def test_the_settings_floor_refuses_a_spinning_interval_from_any_layer(clean_env: pytest.MonkeyPatch) -> None:
    # given a persisted file (or the environment) with a check interval of 1e-9 s
    # when the settings load
    # then they refuse it, naming the variable
    with pytest.raises(ConfigError, match="CODA_VPN_CHECK_INTERVAL_SEC"):
        load_settings(persisted={"vpn_check_interval_sec": 1e-9})


# -- the Redis URL --


@pytest.mark.parametrize(
    "redis_url", ["http://jobs.cloud.test:6379/0", "unix:///tmp/redis.sock", "jobs.cloud.test:6379", 6379]
)
def test_a_redis_url_that_is_not_redis_is_refused_without_showing_it(node: Settings, redis_url: Any) -> None:
    with pytest.raises(
        NodeError, match=r"^cloud bundle has a bad redis_url: not a redis:// or rediss:// URL$"
    ):
        apply_bundle(node, bundle(redis_url=redis_url), fingerprint=FINGERPRINT)


# -- connect_node: a refused answer changes nothing --


class RecordingVpn:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def bring_up(self, settings: Settings, profile: str) -> bool:
        self.calls.append("bring_up")
        return True

    def stop(self, settings: Settings) -> None:
        self.calls.append("stop")


@pytest.mark.parametrize(
    "changes",
    [
        {"cloud_base_url": "https://evil.test"},
        {"heartbeat_path": "https://evil.test/hb"},
        {"vpn": {"required": True, "check_interval_sec": 1e-9, "client_profile_ovpn": "client\n"}},
        {"vpn": {"required": True, "client_profile_ovpn": "x" * (MAX_VPN_PROFILE_CHARS + 1)}},
    ],
)
def test_a_refused_answer_writes_nothing_and_starts_no_vpn(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    requests_mock: rm.Mocker,
    key_pem: str,
    changes: dict[str, Any],
) -> None:
    # given a node with auto-VPN on and a cloud whose answer has one hostile field
    settings = load_settings(
        persisted={"webapp_url": BASE},
        overrides={"state_dir": tmp_path / "state", "node_machine_fingerprint": FINGERPRINT},
    )
    requests_mock.post(f"{BASE}/api/internal/qpu/connect", json=bundle(jwt_private_key=key_pem, **changes))
    vpn = RecordingVpn()

    # when the node provisions
    with pytest.raises(NodeError):
        connect_node(settings, token=TOKEN, vpn=vpn, client=CloudClient(settings, sleep=lambda _: None))

    # then no credential was written and no tunnel was touched
    paths = StatePaths(settings.state_dir)
    assert not paths.config.exists()
    assert not paths.private_key.exists()
    assert vpn.calls == []
