"""coda-bridge: the node runtime that connects an execution backend to the Coda cloud."""

from __future__ import annotations

from .errors import (
    AuthError,
    CodaError,
    ConfigError,
    ExecutorError,
    HeartbeatRejected,
    IRError,
    JobError,
    NodeError,
    VPNError,
    WebhookError,
)
from .settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    # errors
    "AuthError",
    "CodaError",
    "ConfigError",
    "ExecutorError",
    "HeartbeatRejected",
    "IRError",
    "JobError",
    "NodeError",
    "VPNError",
    "WebhookError",
    # settings
    "Settings",
    "load_settings",
    "__version__",
]
