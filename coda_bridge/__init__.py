"""coda-bridge: the node runtime that connects an execution backend to the Coda cloud.

A backend author needs only what is exported here: the circuit types an
executor receives, the result it returns, the device states its optional
``status()`` reports, the built-in executors, and the errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .circuits.ir import Circuit, Gate, Metadata, parse_ir
    from .device import DeviceState
    from .executors import ExecutionResult, Executor, NoopExecutor, StateVectorExecutor, resolve_executor
    from .settings import Settings, load_settings
    from .version import __version__

#: Imported on first use, so ``python -m coda_bridge.<module>`` loads only what that module needs.
_LAZY = {
    **dict.fromkeys(
        ("ExecutionResult", "Executor", "NoopExecutor", "StateVectorExecutor", "resolve_executor"),
        ".executors",
    ),
    **dict.fromkeys(("Circuit", "Gate", "Metadata", "parse_ir"), ".circuits.ir"),
    **dict.fromkeys(("Settings", "load_settings"), ".settings"),
    "DeviceState": ".device",
    "__version__": ".version",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    # circuits an executor receives
    "Circuit",
    "Gate",
    "Metadata",
    "parse_ir",
    # executors
    "ExecutionResult",
    "Executor",
    "NoopExecutor",
    "StateVectorExecutor",
    "resolve_executor",
    "DeviceState",
    # settings
    "Settings",
    "load_settings",
    # errors
    "CodaError",
    "ConfigError",
    "AuthError",
    "NodeError",
    "HeartbeatRejected",
    "VPNError",
    "ExecutorError",
    "JobError",
    "IRError",
    "WebhookError",
    "__version__",
]
