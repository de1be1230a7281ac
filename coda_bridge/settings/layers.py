"""Where each setting's value comes from, as ``doctor`` reports it: read from dynaconf's own history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynaconf import Dynaconf
from dynaconf.utils.inspect import KeyNotFoundError, get_history

from .loader import site_dynaconf
from .model import ENV_PREFIX, Settings, SettingsError

__all__ = ["setting_layers"]


def setting_layers(
    *,
    site: str | None = None,
    persisted: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Where each setting's value comes from, in the layers of :func:`load_settings`.

    One of ``command line``, ``environment (CODA_X)``, ``site file PATH [TABLE]``,
    ``persisted state`` or ``default``: the files and the environment as
    dynaconf's own history of the values it loaded records them.
    """
    layered = site_dynaconf(site)
    try:
        layered.as_dict()
        history = {field: _history(layered, field) for field in Settings.model_fields}
    except Exception as exc:  # dynaconf raises many types for a broken file
        raise SettingsError(f"settings cannot be loaded: {exc}") from None
    layers: dict[str, str] = {}
    for field in Settings.model_fields:
        if overrides and overrides.get(field) is not None:
            layers[field] = "command line"
        elif origin := _loaded_from(field, history[field]):
            layers[field] = origin
        elif persisted and persisted.get(field) is not None:
            layers[field] = "persisted state"
        else:
            layers[field] = "default"
    return layers


def _history(layered: Dynaconf, field: str) -> list[dict[str, Any]]:
    """dynaconf's record of each load of ``field`` (none when neither a file nor the environment set it)."""
    try:
        return list(get_history(layered, field.upper()))
    except KeyNotFoundError:
        return []


def _loaded_from(field: str, history: list[dict[str, Any]]) -> str | None:
    """The layer of dynaconf's last load of ``field``: the environment, or a table of a settings file."""
    for entry in reversed(history):
        loader = str(entry.get("loader", ""))
        if loader.startswith("env"):
            return f"environment ({ENV_PREFIX}_{field.upper()})"
        if loader == "toml":
            return f"site file {entry['identifier']} [{str(entry['env']).lower()}]"
    return None
