"""Settings: every CODA_ variable of PROTOCOL.md section 8, layering and bad values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coda_bridge import ConfigError, load_settings

# Variable, expected default (as the typed value).
SECTION_8_DEFAULTS = {
    "NODE_TOKEN": None,
    "JWT_PRIVATE_KEY": None,
    "JWT_KEY_ID": None,
    "REDIS_URL": None,
    "WEBAPP_URL": "https://coda.conductorquantum.com",
    "HOST": "0.0.0.0",
    "PORT": 8080,
    "EXECUTOR_FACTORY": None,
    "DEVICE_CONFIG": None,
    "QPU_ID": None,
    "QPU_DISPLAY_NAME": None,
    "NATIVE_GATE_SET": "cz",
    "NUM_QUBITS": 5,
    "WEBHOOK_PATH": "/api/internal/qpu/webhook",
    "CONNECT_PATH": "/api/internal/qpu/connect",
    "HEARTBEAT_PATH": "/api/internal/qpu/heartbeat",
    "VPN_REQUIRED": True,
    "VPN_CHECK_INTERVAL_SEC": 10,
    "VPN_PROBE_TARGETS": [],
    "VPN_INTERFACE_HINT": None,
    "ALLOW_DEGRADED_STARTUP": False,
    "NODE_TIMEOUT_SEC": 15,
    "NODE_CONNECT_HEADERS": {},
    "NODE_CONNECT_RETRIES": 3,
    "NODE_MACHINE_FINGERPRINT": None,
    "NODE_AUTO_VPN": True,
    "NODE_VPN_PROFILE_PATH": None,
    "HEARTBEAT_INTERVAL_SEC": 30,
    "SHUTDOWN_DRAIN_TIMEOUT_SEC": 30,
}

# Variable, raw environment text, expected typed value.
SECTION_8_VALUES = [
    ("NODE_TOKEN", "tok-123", "tok-123"),
    ("JWT_KEY_ID", "qpu-a-1710000000000", "qpu-a-1710000000000"),
    ("REDIS_URL", "rediss://cloud:6380/0", "rediss://cloud:6380/0"),
    ("WEBAPP_URL", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("HOST", "127.0.0.1", "127.0.0.1"),
    ("PORT", "9090", 9090),
    ("EXECUTOR_FACTORY", "pkg.mod:make", "pkg.mod:make"),
    ("DEVICE_CONFIG", "/etc/device.yaml", "/etc/device.yaml"),
    ("QPU_ID", "123", "123"),
    ("QPU_DISPLAY_NAME", "Lab QPU", "Lab QPU"),
    ("NATIVE_GATE_SET", "iswap", "iswap"),
    ("NUM_QUBITS", "12", 12),
    ("WEBHOOK_PATH", "/w", "/w"),
    ("CONNECT_PATH", "/c", "/c"),
    ("HEARTBEAT_PATH", "/h", "/h"),
    ("VPN_REQUIRED", "false", False),
    ("VPN_CHECK_INTERVAL_SEC", "2.5", 2.5),
    ("VPN_PROBE_TARGETS", '["http://a/health", "http://b/health"]', ["http://a/health", "http://b/health"]),
    ("VPN_INTERFACE_HINT", "tun7", "tun7"),
    ("ALLOW_DEGRADED_STARTUP", "true", True),
    ("NODE_TIMEOUT_SEC", "3", 3.0),
    ("NODE_CONNECT_HEADERS", '{"X-Site": "lab-1"}', {"X-Site": "lab-1"}),
    ("NODE_CONNECT_RETRIES", "5", 5),
    ("NODE_MACHINE_FINGERPRINT", "host-42", "host-42"),
    ("NODE_AUTO_VPN", "0", False),
    ("NODE_VPN_PROFILE_PATH", "/etc/coda.ovpn", "/etc/coda.ovpn"),
    ("HEARTBEAT_INTERVAL_SEC", "1", 1.0),
    ("SHUTDOWN_DRAIN_TIMEOUT_SEC", "45", 45.0),
]


def _plain(value: object) -> object:
    get = getattr(value, "get_secret_value", None)
    return get() if get else value


@pytest.mark.parametrize("name", sorted(SECTION_8_DEFAULTS))
def test_each_variable_has_its_documented_default(clean_env: pytest.MonkeyPatch, name: str) -> None:
    settings = load_settings()
    assert _plain(getattr(settings, name.lower())) == SECTION_8_DEFAULTS[name]


@pytest.mark.parametrize(("name", "raw", "expected"), SECTION_8_VALUES, ids=[v[0] for v in SECTION_8_VALUES])
def test_each_variable_resolves_with_its_type(
    clean_env: pytest.MonkeyPatch, name: str, raw: str, expected: object
) -> None:
    clean_env.setenv(f"CODA_{name}", raw)
    value = _plain(getattr(load_settings(), name.lower()))
    assert value == expected
    assert type(value) is type(expected)


def test_every_section_8_variable_is_covered() -> None:
    assert {n for n, _, _ in SECTION_8_VALUES} | {"JWT_PRIVATE_KEY"} == set(SECTION_8_DEFAULTS)


def test_comma_separated_probe_targets_are_accepted(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CODA_VPN_PROBE_TARGETS", "http://a, http://b")
    assert load_settings().vpn_probe_targets == ["http://a", "http://b"]


@pytest.mark.parametrize(
    ("name", "raw", "needle"),
    [
        ("PORT", "abc", "CODA_PORT='abc'"),
        ("VPN_REQUIRED", "maybe", "CODA_VPN_REQUIRED='maybe'"),
        ("NATIVE_GATE_SET", "xy", "CODA_NATIVE_GATE_SET='xy'"),
        ("NUM_QUBITS", "99", "CODA_NUM_QUBITS=99"),
        ("NODE_CONNECT_HEADERS", "{oops", "CODA_NODE_CONNECT_HEADERS"),
        ("PORT", "70000", "CODA_PORT=70000"),
        ("RESULT_PROCESSES", "0", "CODA_RESULT_PROCESSES=0"),
        ("RESULT_PROCESSES", "-1", "CODA_RESULT_PROCESSES=-1"),
        ("RESULT_PROCESSES", "abc", "CODA_RESULT_PROCESSES='abc'"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_variable_and_value(
    clean_env: pytest.MonkeyPatch, name: str, raw: str, needle: str
) -> None:
    clean_env.setenv(f"CODA_{name}", raw)
    with pytest.raises(ConfigError, match="is not valid") as caught:
        load_settings()
    assert needle in str(caught.value)


def test_a_bad_secret_is_named_but_never_echoed(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"node_token": ["not", "a", "string"]})
    assert "CODA_NODE_TOKEN" in str(caught.value)
    assert "not" not in str(caught.value).replace("not valid", "")


def test_secrets_do_not_show_in_repr(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CODA_NODE_TOKEN", "super-secret-token")
    clean_env.setenv(
        "CODA_JWT_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----"
    )
    settings = load_settings()
    assert "super-secret-token" not in repr(settings)
    assert "SECRETKEY" not in repr(settings)
    assert settings.node_token_value == "super-secret-token"


def _site_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        "[default]\nport = 9000\nqpu_display_name = 'Default name'\n\n"
        "[lab1]\nport = 9100\nexecutor_concurrency = 2\n"
    )
    clean_env.setenv("CODA_SETTINGS_FILES", str(path))


def test_site_table_overrides_default_and_environment_overrides_site(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _site_file(tmp_path, clean_env)
    assert load_settings().port == 9000

    clean_env.setenv("CODA_ENV", "lab1")
    settings = load_settings()
    assert (settings.port, settings.executor_concurrency, settings.qpu_display_name) == (
        9100,
        2,
        "Default name",
    )

    clean_env.setenv("CODA_PORT", "9200")
    assert load_settings().port == 9200


def test_persisted_state_fills_only_what_the_operator_left_unset(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _site_file(tmp_path, clean_env)
    persisted = {"qpu_id": "q-1", "port": 1111, "qpu_display_name": "Persisted", "redis_url": "redis://x"}
    settings = load_settings(persisted=persisted)
    assert settings.qpu_id == "q-1"
    assert settings.redis_url == "redis://x"
    assert settings.port == 9000
    assert settings.qpu_display_name == "Default name"
    assert "qpu_id" not in settings.model_fields_set
    assert "port" in settings.model_fields_set


def test_overrides_beat_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CODA_PORT", "9200")
    assert load_settings(overrides={"port": 7000}).port == 7000


def test_a_named_site_without_a_table_is_an_error_naming_the_known_sites(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _site_file(tmp_path, clean_env)
    clean_env.setenv("CODA_ENV", "nosuchsite")
    with pytest.raises(ConfigError, match=r"'nosuchsite'.*known sites: lab1") as raised:
        load_settings()
    assert getattr(raised.value, "exit_code", None) == 78


def test_an_unknown_variable_is_logged_not_fatal(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("CODA_PROT", "1")
    with caplog.at_level(logging.WARNING):
        load_settings()
    assert "CODA_PROT" in caplog.text


def test_the_first_runtimes_advertised_provider_is_accepted_without_a_warning(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # given a coda-node 0.1.1 environment file that sets CODA_ADVERTISED_PROVIDER
    clean_env.setenv("CODA_ADVERTISED_PROVIDER", "lab-provider")

    # when the settings load
    with caplog.at_level(logging.WARNING):
        settings = load_settings()

    # then it is a known setting (default "coda", as in 0.1.1), not an ignored one
    assert settings.advertised_provider == "lab-provider"
    assert "Ignoring unknown setting" not in caplog.text
    clean_env.delenv("CODA_ADVERTISED_PROVIDER")
    assert load_settings().advertised_provider == "coda"


@pytest.mark.parametrize("name", ["CODA_DEVCLOUD_URL", "CODA_DEVCLOUD_REDIS_URL", "CODA_FAILPOINTS"])
def test_the_projects_own_variables_are_not_unknown_settings(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    # Given a variable the simulator's CLI or the fault tests read, beside a typo
    clean_env.setenv(name, "http://127.0.0.1:8765" if "URL" in name else "")
    clean_env.setenv("CODA_EXECUTER_FACTORY", "x:y")
    # When the settings load, then only the typo is reported
    with caplog.at_level(logging.WARNING):
        load_settings()
    assert name not in caplog.text
    assert "Ignoring unknown setting CODA_EXECUTER_FACTORY." in caplog.text


def test_replace_validates(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.replace(port=1234).port == 1234
    with pytest.raises(ConfigError, match="CODA_PORT"):
        settings.replace(port="x")


def test_the_webhook_timeout_is_the_first_runtimes_30_s_and_readme_says_so(
    clean_env: pytest.MonkeyPatch,
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    settings = load_settings()

    assert settings.webhook_timeout_sec == 30
    assert "| `CODA_WEBHOOK_TIMEOUT_SEC` | `30` |" in readme


def test_the_persisted_layer_is_read_from_the_state_directory_the_other_layers_name(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given a state directory named by the environment, and a persisted layer read from it
    clean_env.setenv("CODA_STATE_DIR", str(tmp_path / "node"))
    clean_env.setenv("CODA_NUM_QUBITS", "7")
    asked: list[Path] = []

    def persisted(state_dir: Path) -> dict[str, object]:
        asked.append(state_dir)
        return {"qpu_id": "qpu-kept", "num_qubits": 3}

    # when the settings load with it
    settings = load_settings(persisted=persisted)
    # then it was read once, from that directory; it fills what the operator left unset, never more
    assert asked == [tmp_path / "node"]
    assert (settings.qpu_id, settings.num_qubits) == ("qpu-kept", 7)
    assert "qpu_id" not in settings.model_fields_set


def test_a_node_with_persisted_state_reads_its_files_and_environment_once(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from coda_bridge.identity.connect import load_node_settings
    from coda_bridge.identity.credentials import ensure_state_dir, persist

    # given a provisioned node and a misspelt variable
    clean_env.setenv("CODA_STATE_DIR", str(tmp_path / "node"))
    clean_env.setattr("coda_bridge.identity.connect.legacy_dir", lambda: tmp_path / "no-legacy")
    key = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"
    identity = {"qpu_id": "qpu-kept", "jwt_key_id": "k1", "jwt_private_key": key}
    persist(ensure_state_dir(tmp_path / "node"), identity)
    clean_env.setenv("CODA_EXECUTER_FACTORY", "x:y")
    # when its settings load
    with caplog.at_level(logging.WARNING):
        settings = load_node_settings()
    # then the persisted identity is in place and the typo is reported once, not once per pass
    assert settings.qpu_id == "qpu-kept"
    assert caplog.text.count("Ignoring unknown setting CODA_EXECUTER_FACTORY.") == 1


def test_a_claims_lease_is_15_s_unless_set(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings().claim_lease_sec == 15
    clean_env.setenv("CODA_CLAIM_LEASE_SEC", "3")
    assert load_settings().claim_lease_sec == 3.0


def test_a_claims_lease_shorter_than_five_cancel_polls_is_refused_naming_both(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # Given a lease a run's refreshes (one per cancel poll) could not keep alive
    clean_env.setenv("CODA_CANCEL_POLL_INTERVAL_SEC", "1")
    clean_env.setenv("CODA_CLAIM_LEASE_SEC", "4")
    # When the settings are loaded, then they are refused, naming the lease, its value and the poll
    with pytest.raises(ConfigError, match="is not valid") as caught:
        load_settings()
    assert "CODA_CLAIM_LEASE_SEC=4" in str(caught.value)
    assert "CODA_CANCEL_POLL_INTERVAL_SEC (1 s)" in str(caught.value)


def test_deliveries_run_in_two_processes_unless_set(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings().result_processes == 2
    clean_env.setenv("CODA_RESULT_PROCESSES", "1")
    assert load_settings().result_processes == 1
