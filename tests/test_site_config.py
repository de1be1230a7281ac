"""The shipped config/settings.toml loads, and its example site is selectable."""

from __future__ import annotations

from pathlib import Path

import pytest

from coda_bridge import load_settings

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "settings.toml"


def test_the_shipped_settings_file_loads_with_its_example_site(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CODA_SETTINGS_FILES", str(SHIPPED))
    assert load_settings().executor_factory is None

    clean_env.setenv("CODA_ENV", "example-lab")
    settings = load_settings()

    assert settings.executor_factory == "coda_bridge.executors.simulator:create_executor"
    assert settings.batch_size == 10
