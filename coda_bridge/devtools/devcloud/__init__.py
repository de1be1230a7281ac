"""devcloud: a local stand-in for the Coda cloud, to test a node end to end.

It serves the node API of PROTOCOL.md (connect, heartbeat, result
webhooks, health) plus an admin API under ``/devcloud`` that registers
QPUs, mints tokens, puts jobs on the cloud's Redis stream, injects faults
and shows what the node sent.
"""

from __future__ import annotations

from .admin_client import DevCloudClient
from .app_factory import create_app
from .launcher import DevCloudProcess, DevCloudStartError, start_devcloud_process
from .server import serve
from .store import Store
from .transport import DevCloudError

__all__ = [
    "DevCloudClient",
    "DevCloudError",
    "DevCloudProcess",
    "DevCloudStartError",
    "Store",
    "create_app",
    "serve",
    "start_devcloud_process",
]
