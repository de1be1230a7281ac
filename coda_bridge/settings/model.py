"""The settings model: every setting of a node, typed and checked, and the one way a mapping becomes one.

Field ``x`` is environment variable ``CODA_X``; how the layers are found and
merged is :mod:`.loader`'s job.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from redis.connection import parse_url

from ..cloud.origins import OriginError, base_origin, origins_of
from ..control.windows import parse_window
from ..errors import ConfigError
from ..urls import check_broker_url, safe_url

__all__ = [
    "DEFAULT_DEVICE_CONFIG",
    "ENV_PREFIX",
    "EXECUTOR_IR_CHOICES",
    "SECRET_FIELDS",
    "Settings",
    "SettingsError",
    "default_state_dir",
    "validate",
]

#: Every environment variable of ours starts with this.
ENV_PREFIX = "CODA"
#: Fields whose values are never echoed back, in errors or anywhere else (headers may carry API keys).
SECRET_FIELDS = frozenset({"node_token", "jwt_private_key", "node_connect_headers"})
_TARGETS = ("cz", "iswap", "pcz", "cnot")
#: Device YAML used when ``device_config`` is unset and this file exists (relative to the working directory).
DEFAULT_DEVICE_CONFIG = "site/device.yaml"
#: A claim's lease spans at least this many cancel polls (each refreshes it).
CLAIM_LEASE_POLLS = 5
#: Which circuit type executors get: detected, coda-bridge's ``Circuit``, or coda-node's ``NativeGateIR``.
EXECUTOR_IR_CHOICES = ("auto", "coda-bridge", "coda-node")


class SettingsError(ConfigError):
    """The settings cannot work at all (a bad value, an unknown site); a process exits ``EX_CONFIG`` (78)."""

    exit_code = os.EX_CONFIG


def default_state_dir() -> Path:
    """Where credentials live by default: a place that survives reboots, never ``/tmp``."""
    if os.geteuid() == 0:
        return Path("/var/lib/coda-bridge")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "coda-bridge"


class Settings(BaseModel):
    """Every setting of a node, typed.  Field ``x`` is environment variable ``CODA_X``."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    # -- identity and cloud (PROTOCOL.md section 8) --
    node_token: SecretStr | None = None
    jwt_private_key: SecretStr | None = None
    jwt_key_id: str | None = None
    qpu_id: str | None = None
    qpu_display_name: str | None = None
    native_gate_set: str = "cz"
    num_qubits: int = Field(5, ge=1, le=50)
    redis_url: str | None = None
    webapp_url: str = "https://coda.conductorquantum.com"
    connect_path: str = "/api/internal/qpu/connect"
    register_path: str = "/api/internal/qpu/register"
    heartbeat_path: str = "/api/internal/qpu/heartbeat"
    webhook_path: str = "/api/internal/qpu/webhook"
    node_timeout_sec: float = Field(15, gt=0)
    node_connect_headers: dict[str, str] = {}
    node_connect_retries: int = Field(3, ge=1)
    node_machine_fingerprint: str | None = None
    use_env_proxies: bool = False
    #: coda-node 0.1.1's ``CODA_ADVERTISED_PROVIDER``: accepted so its environment files load; unused there.
    advertised_provider: str = "coda"

    # -- web probes --
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    web_workers: int = Field(1, ge=1)  # one gthread worker answers the probes; more only for heavy scraping
    dashboard_enabled: bool = False
    dashboard_prefix: str = "/dashboard"
    #: HTTP Basic credentials of the dashboard; without them it mounts only on a loopback bind.
    dashboard_username: str = "coda"
    dashboard_password: SecretStr | None = None
    ready_stream_stale_sec: float = Field(30, gt=0)

    # -- executor --
    executor_factory: str | None = None
    device_config: str | None = Field(None, validate_default=True)
    executor_ir: str = "auto"
    executor_concurrency: int = Field(1, ge=1)
    batch_size: int = Field(10, ge=1)
    max_shots: int = Field(1_000_000, ge=1)
    #: A job whose stream fields are larger fails at intake; also the most one broker message carries.
    max_job_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    job_time_limit_sec: float = Field(3600, gt=0)
    cancel_poll_interval_sec: float = Field(0.2, gt=0)
    #: A job's claim lapses this long after its worker died (then the job runs again); refreshed at
    #: every cancel poll, so it spans several of them.
    claim_lease_sec: float = Field(15, ge=1)
    #: How often a jobs worker asks its executor's ``status()`` while no job starts (also before each job).
    device_poll_interval_sec: float = Field(5, gt=0)
    #: Recurring UTC windows in which the node is paused, e.g. ``["sun 02:00-04:00", "mon-fri 12:00-12:30"]``.
    maintenance_windows: list[str] = []
    #: Run at a window's start when the executor has no ``calibrate()``; bounded by the timeout below.
    calibration_command: str | None = None
    calibration_timeout_sec: float = Field(600, gt=0)
    #: ``window_end``, or ``hook_end``: resume once the calibration hook succeeded.
    maintenance_resume: str = "window_end"
    #: A run past its cancel or time limit gets this long to end before its executor process is killed.
    executor_stop_grace_sec: float = Field(5, gt=0)
    #: Runs of one job that may end with the executor's process dying before the job fails.
    max_executor_crashes: int = Field(3, ge=1)
    simulator_seed: int | None = None
    simulator_max_qubits: int = Field(24, ge=1, le=30)

    # -- stream bridge and local broker --
    broker_url: str = "redis://127.0.0.1:6379/0"
    consumer_name: str | None = None
    stream_block_ms: int = Field(2000, ge=1)
    claim_idle_sec: float = Field(60, gt=0)
    max_local_queue: int = Field(1000, ge=1)
    worker_heartbeat_timeout_sec: float = Field(10, gt=0)
    #: How long a delivered job's record stays in the broker (it absorbs a duplicate of the job).
    record_retention_sec: float = Field(7 * 86_400, gt=0)

    # -- result delivery --
    #: Delivery worker processes: each has one GIL (signing and HTTP take CPU) and one dramatiq
    #: consumer (fetches and acks), which bounds one near 300 deliveries/s; two let a burst go twice
    #: as wide.  1 suits a small host (each costs a process's boot and memory), more a burst-heavy one.
    result_processes: int = Field(2, ge=1)
    #: The first runtime's timeout: a slow cloud that takes 13 s still gets each result once.
    webhook_timeout_sec: float = Field(30, gt=0)
    webhook_max_retries: int = Field(20, ge=0)
    webhook_max_backoff_sec: float = Field(300, gt=0)
    #: Origins besides webapp_url's that results may go to: scheme://host[:port], or a bare host (https, 443).
    allowed_callback_hosts: list[str] = []
    #: Origins (same forms) a connect answer may move webapp_url to; any other move is refused.
    allowed_cloud_origins: list[str] = []

    # -- heartbeat and VPN --
    heartbeat_interval_sec: float = Field(30, gt=0)
    jobs_worker_grace_sec: float = Field(60, gt=0)
    vpn_required: bool = True
    vpn_check_interval_sec: float = Field(10, ge=1, le=3600)
    vpn_probe_targets: list[str] = []
    vpn_interface_hint: str | None = None
    allow_degraded_startup: bool = False
    node_auto_vpn: bool = True
    node_vpn_profile_path: str | None = None

    # -- process --
    state_dir: Path = Field(default_factory=default_state_dir)
    log_level: str = "INFO"
    #: ``text`` (one line per record) or ``json`` (one JSON object per line), for every process.
    log_format: str = "text"
    shutdown_drain_timeout_sec: float = Field(30, gt=0)
    #: How long ``start --daemon`` waits for the node to be ready before it calls the start failed.
    start_timeout_sec: float = Field(60, gt=0)

    @field_validator("native_gate_set")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if value not in _TARGETS:
            raise ValueError(f"expected one of {', '.join(_TARGETS)}")
        return value

    @field_validator("device_config")
    @classmethod
    def _default_device_config(cls, value: str | None) -> str | None:
        """Unset means ``./site/device.yaml`` when it exists, as in the first runtime; factories read it."""
        if not value and Path(DEFAULT_DEVICE_CONFIG).is_file():
            return DEFAULT_DEVICE_CONFIG
        return value or None

    @field_validator("maintenance_windows", mode="before")
    @classmethod
    def _window_list(cls, value: Any) -> Any:
        """From the environment: JSON, or windows separated by ``;`` (a window's days hold commas)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        return [part.strip() for part in text.split(";") if part.strip()]

    @field_validator("maintenance_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_window(text)
        return value

    @field_validator("maintenance_resume")
    @classmethod
    def _resume_when(cls, value: str) -> str:
        if value not in ("window_end", "hook_end"):
            raise ValueError("expected window_end or hook_end")
        return value

    @field_validator("claim_lease_sec")
    @classmethod
    def _lease_spans_polls(cls, value: float, info: ValidationInfo) -> float:
        """A claim refreshed at every cancel poll must outlive a few of them, or a live run loses it."""
        poll = info.data.get("cancel_poll_interval_sec")
        if poll is not None and value < CLAIM_LEASE_POLLS * poll:
            raise ValueError(
                f"must be at least {CLAIM_LEASE_POLLS} times CODA_CANCEL_POLL_INTERVAL_SEC ({poll:g} s)"
            )
        return value

    @field_validator("executor_ir")
    @classmethod
    def _known_executor_ir(cls, value: str) -> str:
        if value not in EXECUTOR_IR_CHOICES:
            raise ValueError(f"expected one of {', '.join(EXECUTOR_IR_CHOICES)}")
        return value

    @field_validator(
        "node_connect_headers",
        "vpn_probe_targets",
        "allowed_callback_hosts",
        "allowed_cloud_origins",
        mode="before",
    )
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        """Environment variables carry lists and mappings as JSON (or, for lists, commas)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return []
        if text[0] in "[{":
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("allowed_callback_hosts", "allowed_cloud_origins")
    @classmethod
    def _origins(cls, value: list[str], info: ValidationInfo) -> list[str]:
        try:
            origins_of(value, str(info.field_name))
        except OriginError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("webapp_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        try:
            base_origin(value)
        except OriginError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        chosen = value.strip().lower()
        if chosen not in ("text", "json"):
            raise ValueError("expected text or json")
        return chosen

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    # -- derived values --

    @property
    def node_token_value(self) -> str | None:
        return self.node_token.get_secret_value() if self.node_token else None

    @property
    def jwt_private_key_value(self) -> str | None:
        return self.jwt_private_key.get_secret_value() if self.jwt_private_key else None

    @property
    def has_identity(self) -> bool:
        """The node was provisioned: it knows its QPU, its key id and its private key."""
        return bool(self.qpu_id and self.jwt_key_id and self.jwt_private_key_value)

    @property
    def resolved_consumer_name(self) -> str:
        """The stream consumer name: stable per host, so a restart finds its own pending entries."""
        return self.consumer_name or f"{socket.gethostname()}-bridge"

    # -- checks every entry point makes before using a value --

    def check_redis_urls(self, fields: tuple[str, ...] = ("broker_url", "redis_url")) -> None:
        """Refuse a Redis URL redis-py cannot parse, naming its setting (:class:`SettingsError`, exit 78).

        The broker's may also be a Sentinel URL (``redis+sentinel://``, see
        :mod:`coda_bridge.queueing.broker_client`).
        """
        for field in fields:
            url = getattr(self, field)
            if url is None:
                continue
            try:
                check_broker_url(url) if field == "broker_url" else parse_url(url)
            except ValueError as exc:
                raise SettingsError(
                    f"{self._setting_name(field)}={safe_url(url)!r} is not a valid Redis URL: {exc}"
                ) from None

    def _setting_name(self, field: str) -> str:
        """The variable that sets ``field``, or where its value came from when no variable did."""
        variable = f"{ENV_PREFIX}_{field.upper()}"
        if field in self.model_fields_set:
            return variable
        return f"{field} (persisted in the state directory; {variable} overrides it)"

    def url(self, path: str) -> str:
        """``webapp_url`` joined with an API path."""
        return self.webapp_url.rstrip("/") + "/" + path.lstrip("/")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        data = self.model_dump()
        data.update(changes)
        return validate(data, explicit=self.model_fields_set | set(changes))


def validate(data: Mapping[str, Any], explicit: set[str] | None = None) -> Settings:
    """``data`` as :class:`Settings`, or a :class:`SettingsError` naming the first bad variable."""
    try:
        settings = Settings.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        variable = f"{ENV_PREFIX}_{field.upper()}"
        if field in SECRET_FIELDS:
            shown = "(hidden)"
        else:
            shown = repr(first.get("input"))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
        if first["type"] == "extra_forbidden":
            raise SettingsError(f"{variable} is not a known setting") from None
        raise SettingsError(f"{variable}={shown} is not valid: {first['msg']}") from None
    if explicit is not None:
        object.__setattr__(settings, "__pydantic_fields_set__", set(explicit))
    return settings
