"""Persisted credentials: 0600 files in a 0700 directory, refused when unsafe, legacy import."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from coda_bridge.errors import ConfigError
from coda_bridge.identity.credentials import (
    PERSISTED_FIELDS,
    StatePaths,
    ensure_state_dir,
    load_persisted,
    persist,
    reset_state,
)

KEY = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"


def _values() -> dict[str, object]:
    return {
        "qpu_id": "q1",
        "qpu_display_name": "Q",
        "jwt_key_id": "k1",
        "jwt_private_key": KEY,
        "num_qubits": 2,
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_persist_writes_0600_files_in_a_0700_directory(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    persist(paths, _values())
    assert _mode(paths.root) == 0o700
    assert _mode(paths.config) == 0o600
    assert _mode(paths.private_key) == 0o600
    config = json.loads(paths.config.read_text())
    assert set(config) == set(PERSISTED_FIELDS)
    assert KEY not in paths.config.read_text()
    assert config["jwt_private_key_path"] == str(paths.private_key)


def test_load_reads_back_the_layer_with_the_key(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    persist(paths, _values())
    loaded = load_persisted(paths.root)
    assert loaded is not None
    assert loaded["jwt_private_key"] == KEY
    assert loaded["qpu_id"] == "q1"
    assert "jwt_private_key_path" not in loaded


def test_nothing_persisted_is_none(tmp_path: Path) -> None:
    assert load_persisted(tmp_path / "empty") is None


def test_a_widened_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    persist(paths, _values())
    paths.config.chmod(0o644)
    with pytest.raises(ConfigError, match="0644") as caught:
        load_persisted(paths.root)
    assert f"chmod 600 {paths.config}" in str(caught.value)


def test_a_widened_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    persist(paths, _values())
    paths.private_key.chmod(0o640)
    with pytest.raises(ConfigError, match="coda-private-key") as caught:
        load_persisted(paths.root)
    assert "abc" not in str(caught.value)


def test_a_symlink_in_place_of_the_config_is_refused(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    persist(paths, _values())
    elsewhere = tmp_path / "elsewhere.json"
    paths.config.replace(elsewhere)
    paths.config.symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="symlink"):
        load_persisted(paths.root)


def test_a_wide_state_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "wide"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    with pytest.raises(ConfigError, match="chmod 700"):
        ensure_state_dir(root)


def test_writing_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    paths.config.symlink_to(victim)
    persist(paths, _values())
    assert victim.read_text() == "untouched"
    assert not paths.config.is_symlink()


def test_legacy_files_are_imported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    legacy = tmp_path / "tmp"
    legacy.mkdir()
    old_key = legacy / "coda-private-key"
    old_config = legacy / "coda.config"
    for path, text in ((old_key, KEY), (old_config, json.dumps({"qpu_id": "old", "jwt_key_id": "k"}))):
        path.write_text(text)
        path.chmod(0o600)
    root = tmp_path / "state"
    with caplog.at_level(logging.INFO):
        loaded = load_persisted(root, legacy_dir=legacy)
    assert loaded is not None
    assert loaded["qpu_id"] == "old"
    assert loaded["jwt_private_key"] == KEY
    assert "Imported" in caplog.text
    assert StatePaths(root).config.exists()

    caplog.clear()
    old_config.write_text(json.dumps({"qpu_id": "changed"}))
    with caplog.at_level(logging.INFO):
        again = load_persisted(root, legacy_dir=legacy)
    assert again is not None
    assert again["qpu_id"] == "old"
    assert "Imported" not in caplog.text


def _planted(tmp_path: Path) -> Path:
    legacy = tmp_path / "tmp"
    legacy.mkdir()
    for name, text in (("coda-private-key", KEY), ("coda.config", json.dumps({"qpu_id": "planted"}))):
        (legacy / name).write_text(text)
        (legacy / name).chmod(0o600)
    return legacy


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
@pytest.mark.parametrize("name", ["coda.config", "coda-private-key"])
def test_legacy_files_of_another_user_are_ignored_not_a_reason_to_refuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    # Given first-runtime files in the shared temporary directory, one of them another user's
    legacy = _planted(tmp_path)
    os.chown(legacy / name, 65534, 65534)

    # When a first start looks for them
    with caplog.at_level(logging.WARNING):
        loaded = load_persisted(tmp_path / "state", legacy_dir=legacy)

    # Then nothing is imported, the start goes on, and the log says why
    assert loaded is None
    assert "owned by uid 65534" in caplog.text
    assert not StatePaths(tmp_path / "state").config.exists()


def test_a_legacy_file_planted_as_a_symlink_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = _planted(tmp_path)
    (legacy / "coda.config").unlink()
    (legacy / "coda.config").symlink_to(tmp_path / "elsewhere.json")

    with caplog.at_level(logging.WARNING):
        loaded = load_persisted(tmp_path / "state", legacy_dir=legacy)

    assert loaded is None
    assert "a symlink" in caplog.text


def test_reset_removes_every_persisted_file(tmp_path: Path) -> None:
    paths = ensure_state_dir(tmp_path / "state")
    persist(paths, _values())
    paths.vpn_profile.write_text("client\n")
    removed = reset_state(paths.root)
    assert set(removed) == {paths.config, paths.private_key, paths.vpn_profile}
    assert os.listdir(paths.root) == []
