"""What the commands share: settings loaders, common options, and the unrecoverable-exit error."""

from __future__ import annotations

from typing import Any

import click

from ..errors import CodaError
from ..ops.respawn import EX_CONFIG

__all__ = [
    "DEFAULT_DEVCLOUD_URL",
    "Unrecoverable",
    "host_option",
    "node_settings",
    "plain_settings",
    "port_option",
    "site_option",
    "token_option",
]

#: Default address of the local cloud simulator (``coda-bridge devcloud``).
DEFAULT_DEVCLOUD_URL = "http://127.0.0.1:8765"


class Unrecoverable(CodaError):
    """A process cannot work as configured; it exits with ``EX_CONFIG`` so it is not restarted."""

    exit_code = EX_CONFIG


def node_settings(site: str | None = None, **overrides: Any) -> Any:
    """Settings with the persisted identity layer."""
    from ..identity.connect import load_node_settings

    return load_node_settings(overrides=overrides, site=site)


def plain_settings(site: str | None = None) -> Any:
    """Settings without the persisted layer: enough to find the state directory."""
    from ..settings import load_settings

    return load_settings(site=site)


host_option = click.option("--host", help="Address of the probes app (overrides CODA_HOST).")
port_option = click.option("--port", type=int, help="Port of the probes app (overrides CODA_PORT).")
site_option = click.option("--site", help="Site table of config/settings.toml to use (sets CODA_ENV).")
token_option = click.option(
    "--token", envvar="CODA_NODE_TOKEN", show_envvar=True, help="One-time node token (first start only)."
)
