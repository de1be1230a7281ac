"""coda-bridge: the node runtime that connects an execution backend to the Coda cloud.

A backend author needs only what is exported here: the circuit types an
executor receives, the result it returns, the built-in executors, and
the errors.
"""

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
from .executors import ExecutionResult, Executor, NoopExecutor, StateVectorExecutor, resolve_executor
from .ir import Circuit, Gate, Metadata, parse_ir
from .settings import Settings, load_settings

__version__ = "0.1.0"

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
