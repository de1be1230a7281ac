"""Loading the settings: the files found, the site chosen, dynaconf over them, then the model.

Precedence, highest first: explicit overrides (CLI flags), ``CODA_``
environment variables, the site table of ``settings.toml`` chosen by
``CODA_ENV`` (over its ``[default]`` table, with ``.secrets.toml`` beside
it), persisted node state, then the model's defaults.  :func:`load_settings`
is the one loader every process and command goes through.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from ..trust import UntrustedFile, check_trusted
from .model import ENV_PREFIX, Settings, SettingsError, validate

__all__ = [
    "NOT_NODE_SETTINGS",
    "SYSTEM_CONFIG_DIR",
    "Persisted",
    "config_search_path",
    "load_settings",
    "selected_site",
    "settings_files",
    "site_dynaconf",
]

logger = logging.getLogger(__name__)

#: ``CODA_`` variables of this project that are no node setting (the simulator's CLI, fault tests):
#: known, so never reported as unknown.
NOT_NODE_SETTINGS = frozenset(
    {"devcloud_url", "devcloud_redis_url", "failpoints", "bridge_keep_pgrp", "log_file"}
)
#: The settings file and its git-ignored companion, looked for in each directory of the search path.
SETTINGS_FILE_NAME = "settings.toml"
SECRETS_FILE_NAME = ".secrets.toml"
#: The system-wide settings directory (packages, systemd units).
SYSTEM_CONFIG_DIR = Path("/etc/coda-bridge")
#: The ``config/`` directory of a source checkout (an editable install): beside the package.
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
#: A file only a source checkout has beside the package (so no other distribution's ``config/`` is read).
SOURCE_CHECKOUT_MARKER = "pyproject.toml"
#: Site names that select only ``[default]`` (dynaconf's own names for it).
DEFAULT_SITES = frozenset({"default", "global"})
#: Variables that steer the loading itself rather than being settings.
_META_KEYS = frozenset({"ENV", "SETTINGS_FILES", "SETTINGS_FILE"})
#: The persisted layer: its values, or how to read them from the state directory the other layers name.
Persisted = Mapping[str, Any] | Callable[[Path], Mapping[str, Any] | None]


def config_search_path() -> list[Path]:
    """Directories searched for ``settings.toml`` when ``CODA_SETTINGS_FILES`` is unset, first found wins."""
    path = [Path.cwd() / "config", SYSTEM_CONFIG_DIR]
    if (SOURCE_CONFIG_DIR.parent / SOURCE_CHECKOUT_MARKER).is_file():
        path.append(SOURCE_CONFIG_DIR)
    return path


def settings_files() -> list[Path]:
    """The settings files this process reads, as absolute paths (missing ones are skipped when loading).

    ``CODA_SETTINGS_FILES`` (comma-separated, relative to the working
    directory) names them; otherwise ``settings.toml`` and ``.secrets.toml``
    of the first directory of :func:`config_search_path` that has a
    ``settings.toml``; otherwise none.
    """
    raw = os.environ.get(f"{ENV_PREFIX}_SETTINGS_FILES")
    if raw:
        return [Path(part.strip()).absolute() for part in raw.split(",") if part.strip()]
    for directory in config_search_path():
        if (directory / SETTINGS_FILE_NAME).is_file():
            return [directory / SETTINGS_FILE_NAME, directory / SECRETS_FILE_NAME]
    return []


def _tables(files: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Each existing file with its top-level tables (lower-cased names)."""
    found = []
    for path in files:
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"settings file {path} cannot be read: {exc}") from None
        found.append((path, {k.lower(): v for k, v in data.items() if isinstance(v, dict)}))
    return found


def _check_file(path: Path) -> None:
    """Refuse a settings file another user can change: it chooses the cloud and the code the node runs."""
    try:
        check_trusted(path, "settings file")
    except UntrustedFile as exc:
        raise SettingsError(str(exc)) from None


def selected_site(site: str | None = None) -> str | None:
    """The site asked for: ``site`` (``--site``), else ``CODA_ENV``; None for ``[default]`` only."""
    chosen = site if site is not None else os.environ.get(f"{ENV_PREFIX}_ENV")
    return chosen or None


def _check_site(site: str | None, files: list[Path]) -> None:
    """Refuse a site that no settings file has a table for, naming the sites there are."""
    if site is None or site.lower() in DEFAULT_SITES:
        return
    known = sorted({name for _, tables in _tables(files) for name in tables} - DEFAULT_SITES)
    if site.lower() in known:
        return
    existing = [str(path) for path in files if path.is_file()]
    if existing:
        where = ", ".join(existing)
    else:
        looked = [str(path) for path in files] or [
            str(directory / SETTINGS_FILE_NAME) for directory in config_search_path()
        ]
        where = f"no settings file (looked for {', '.join(looked)}; set CODA_SETTINGS_FILES)"
    sites = ", ".join(known) if known else "none"
    raise SettingsError(f"site {site!r} (CODA_ENV or --site) has no table in {where}; known sites: {sites}")


def site_dynaconf(site: str | None) -> Dynaconf:
    """The settings files and the environment, as dynaconf loads them (it records each value's origin)."""
    files = settings_files()
    for path in files:
        if path.is_file():
            _check_file(path)
    site = selected_site(site)
    _check_site(site, files)
    extra: dict[str, Any] = {"env": site} if site else {}
    return Dynaconf(
        envvar_prefix=ENV_PREFIX,
        settings_files=[str(path) for path in files],
        environments=True,
        env_switcher=f"{ENV_PREFIX}_ENV",
        load_dotenv=False,
        **extra,
    )


def _layered(site: str | None) -> dict[str, Any]:
    """Values set by the site file or the environment (lower-cased keys), nothing else."""
    layered = site_dynaconf(site)
    try:
        values = layered.as_dict()
    except Exception as exc:  # dynaconf raises many types for a broken file
        raise SettingsError(f"settings cannot be loaded: {exc}") from None
    return {k.lower(): v for k, v in values.items() if k not in _META_KEYS and k != "LOAD_DOTENV"}


def load_settings(
    *,
    persisted: Persisted | None = None,
    overrides: Mapping[str, Any] | None = None,
    site: str | None = None,
) -> Settings:
    """Build the settings from every layer; raise :class:`ConfigError` naming a bad variable.

    ``persisted`` is the state layer, or a function reading it from the
    state directory the other layers name (the files and the environment are
    then read once).  ``model_fields_set`` of the result holds what the
    operator set (file, environment or override), so persisted state never
    hides it.
    """
    known = set(Settings.model_fields)
    layered = _layered(site)
    for key in sorted(set(layered) - known - NOT_NODE_SETTINGS):
        logger.warning("Ignoring unknown setting %s_%s.", ENV_PREFIX, key.upper())
    operator = {k: v for k, v in layered.items() if k in known}
    operator.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if callable(persisted):
        # the operator's values alone name the state directory (and a bad one is named before it is read)
        persisted = persisted(validate(operator, explicit=set(operator)).state_dir)
    data = {k: v for k, v in (persisted or {}).items() if k in known and v is not None}
    data.update(operator)
    return validate(data, explicit=set(operator))
