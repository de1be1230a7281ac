"""Typed settings, layered by dynaconf.

Precedence, highest first: explicit overrides (CLI flags), ``CODA_``
environment variables, the site table of ``settings.toml`` chosen by
``CODA_ENV`` (over its ``[default]`` table, with ``.secrets.toml`` beside
it), persisted node state, then the defaults of the model.  Code reads one
frozen :class:`Settings` object with named attributes; nothing else looks up
strings.

The settings files are found the same way from any working directory
(:func:`settings_files`): ``CODA_SETTINGS_FILES`` when set, else the first
of ``./config/``, ``/etc/coda-bridge/`` and the ``config/`` of a source
checkout that holds a ``settings.toml``.  A site that no file has a table
for is an error, not a silent fall-back to ``[default]``.

The model is :mod:`.model`, the one loader :mod:`.loader`, the report of
where each value came from :mod:`.layers`; their public names are here.
"""

from __future__ import annotations

from .layers import setting_layers
from .loader import config_search_path, load_settings, selected_site, settings_files
from .model import (
    DEFAULT_DEVICE_CONFIG,
    ENV_PREFIX,
    EXECUTOR_IR_CHOICES,
    SECRET_FIELDS,
    Settings,
    SettingsError,
    default_state_dir,
)

__all__ = [
    "DEFAULT_DEVICE_CONFIG",
    "ENV_PREFIX",
    "EXECUTOR_IR_CHOICES",
    "SECRET_FIELDS",
    "Settings",
    "SettingsError",
    "config_search_path",
    "default_state_dir",
    "load_settings",
    "selected_site",
    "setting_layers",
    "settings_files",
]
