"""The one error tree of coda-bridge.

Everything the library raises on purpose is a :class:`CodaError`; library
errors (redis, requests, cryptography) are converted at the edge.  Messages
are meant for operators: one line, naming what was wrong, never a secret.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ClockRefused",
    "CodaError",
    "ConfigError",
    "ExecutorError",
    "HeartbeatRejected",
    "IRError",
    "JobError",
    "NodeError",
    "VPNError",
    "WebhookError",
]


class CodaError(Exception):
    """Root of every error coda-bridge raises on purpose."""


class ConfigError(CodaError):
    """A setting, settings file or persisted credential file is unusable."""


class AuthError(CodaError):
    """A key or token cannot be loaded, signed or verified."""


class VPNError(CodaError):
    """The VPN profile is unsafe, or the tunnel did not come up."""


class NodeError(CodaError):
    """The cloud refused the node, or could not be reached.

    ``status`` is the HTTP status when the cloud answered, else ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClockRefused(NodeError):
    """The cloud refused the node's JWT for its time claims (``iat``, ``nbf``, ``exp``): worth retrying."""


class HeartbeatRejected(NodeError):
    """The cloud answered a heartbeat with a non-2xx status."""


class ExecutorError(CodaError):
    """The executor could not be resolved, or failed to run a circuit."""


class JobError(CodaError):
    """A job message cannot be run as sent (bad shots, fields or circuit)."""


class IRError(JobError):
    """The circuit breaks a rule of the Native Gate IR."""


class WebhookError(CodaError):
    """A result could not be delivered to the cloud.

    ``status`` is the HTTP status when the cloud answered, else ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Transport errors, 5xx, and 401/403 are worth another attempt; any other 4xx is final.

        A 401/403 refuses the JWT the node signed, not the result: a clock
        the refusal's ``Date`` corrects, or a key the cloud restores, lets a
        later attempt through, and one that never gets through is
        dead-lettered for ``replay``, never dropped.
        """
        return self.status is None or self.status >= 500 or self.status in (401, 403)
