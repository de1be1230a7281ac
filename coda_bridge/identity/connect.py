"""Node identity: provision with a one-time token, or reconnect with the node's own JWT.

Every start talks to the connect endpoint (PROTOCOL.md 1.1); the bundle
it answers is applied to the settings and persisted (1.2).  Identity
always comes from the cloud; cloud-provided addresses, paths and the VPN
block fill what the operator did not set.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..cloud.client import CloudClient
from ..cloud.signing import Signer
from ..errors import ConfigError, NodeError
from ..settings import Settings, load_settings
from .credentials import (
    ensure_state_dir,
    load_persisted,
    mark_connected,
    persist,
    remember_token,
    token_was_used,
)

__all__ = [
    "VpnControl",
    "apply_bundle",
    "connect_node",
    "legacy_dir",
    "load_node_settings",
    "machine_fingerprint",
    "node_signer",
]

logger = logging.getLogger(__name__)

#: Bundle fields without which a node cannot work.
REQUIRED_BUNDLE_FIELDS = ("qpu_id", "native_gate_set", "num_qubits", "jwt_key_id")
#: Bundle path overrides, applied when present.
PATH_FIELDS = ("connect_path", "register_path", "heartbeat_path", "webhook_path")

NO_CREDENTIALS = (
    "no credentials: pass --token (or set CODA_NODE_TOKEN) with a node token from the Coda cloud, "
    "or set CODA_JWT_PRIVATE_KEY, CODA_JWT_KEY_ID and CODA_QPU_ID"
)


class VpnControl(Protocol):
    """What the connect step needs from the VPN manager."""

    def bring_up(self, settings: Settings, profile: str) -> bool:
        """Validate and write ``profile``, start OpenVPN unless a tunnel is up; True if it started one."""

    def stop(self, settings: Settings) -> None:
        """Stop the OpenVPN daemon this node started, if any."""


def machine_fingerprint(settings: Settings) -> str:
    """``{hostname}-{mac as integer}`` unless configured (or persisted)."""
    return settings.node_machine_fingerprint or f"{socket.gethostname()}-{uuid.getnode()}"


def node_signer(settings: Settings) -> Signer:
    """The signer for this node's identity, or :class:`ConfigError` saying what is missing."""
    key, kid, qpu_id = settings.jwt_private_key_value, settings.jwt_key_id, settings.qpu_id
    if not (key and kid and qpu_id):
        raise ConfigError(NO_CREDENTIALS)
    return Signer(key, kid, qpu_id)


def _required(bundle: Mapping[str, Any], field: str) -> Any:
    value = bundle.get(field)
    if value is None or value == "":
        raise NodeError(f"cloud bundle is missing the required field {field!r}")
    return value


def apply_bundle(settings: Settings, bundle: Mapping[str, Any], *, fingerprint: str) -> Settings:
    """The settings after the cloud's bundle: identity always, the rest where the operator is silent."""
    display = bundle.get("qpu_display_name") or bundle.get("qpu_label")
    if not display:
        raise NodeError("cloud bundle is missing the required field 'qpu_display_name'")
    identity: dict[str, Any] = {name: _required(bundle, name) for name in REQUIRED_BUNDLE_FIELDS}
    identity["qpu_display_name"] = display
    if bundle.get("jwt_private_key"):
        identity["jwt_private_key"] = bundle["jwt_private_key"]

    cloud: dict[str, Any] = {"node_machine_fingerprint": fingerprint}
    if bundle.get("redis_url"):
        cloud["redis_url"] = bundle["redis_url"]
    base = bundle.get("cloud_base_url") or bundle.get("webapp_url")
    if base:
        cloud["webapp_url"] = base
    cloud.update({name: bundle[name] for name in PATH_FIELDS if bundle.get(name)})
    vpn = bundle.get("vpn") if isinstance(bundle.get("vpn"), Mapping) else {}
    assert isinstance(vpn, Mapping)
    if bundle.get("connection_mode") == "https":
        cloud["vpn_required"] = False
    elif "required" in vpn:
        cloud["vpn_required"] = bool(vpn["required"])
    if vpn.get("interface_hint"):
        cloud["vpn_interface_hint"] = vpn["interface_hint"]
    if vpn.get("check_interval_sec"):
        cloud["vpn_check_interval_sec"] = vpn["check_interval_sec"]
    if vpn.get("probe_targets"):
        cloud["vpn_probe_targets"] = list(vpn["probe_targets"])

    operator = settings.model_fields_set
    changes = dict(identity)
    changes.update({k: v for k, v in cloud.items() if k not in operator})
    try:
        return settings.replace(**changes)
    except ConfigError as exc:
        raise NodeError(f"cloud bundle has a bad value: {exc}") from None


def _persisted_values(settings: Settings) -> dict[str, Any]:
    values = settings.model_dump(exclude={"jwt_private_key", "node_token"})
    values["jwt_private_key"] = settings.jwt_private_key_value
    return values


def connect_node(
    settings: Settings,
    *,
    token: str | None = None,
    connectivity: Sequence[Sequence[int]] | None = None,
    vpn: VpnControl | None = None,
    client: CloudClient | None = None,
) -> Settings:
    """Provision (token) or reconnect (JWT), apply the bundle, bring up the VPN, persist; return settings."""
    paths = ensure_state_dir(settings.state_dir)
    token = token or settings.node_token_value
    has_key = settings.has_identity
    if token and has_key and token_was_used(paths, token):
        logger.info("This node already provisioned with the given token; reconnecting with its key instead.")
        token = None

    fingerprint = machine_fingerprint(settings)
    body: dict[str, Any] = {"machine_fingerprint": fingerprint}
    if connectivity:
        body["connectivity"] = [list(edge) for edge in connectivity]

    if token:
        bearer, mode = token, "provisioning"
    else:
        bearer, mode = node_signer(settings).sign(), "reconnect"
    client = client or CloudClient(settings)
    logger.info("Connecting to %s (%s).", settings.url(settings.connect_path), mode)
    bundle = client.connect(bearer, body)
    if mode == "provisioning" and not bundle.get("jwt_private_key"):
        raise NodeError("cloud bundle is missing the required field 'jwt_private_key' after provisioning")
    applied = apply_bundle(settings, bundle, fingerprint=fingerprint)
    _ = node_signer(applied)  # a garbled key from the cloud fails here, before anything is written

    vpn_block = bundle.get("vpn") if isinstance(bundle.get("vpn"), Mapping) else {}
    profile = vpn_block.get("client_profile_ovpn") if isinstance(vpn_block, Mapping) else None
    started_vpn = False
    try:
        if applied.vpn_required and applied.node_auto_vpn and profile and vpn is not None:
            applied = applied.replace(node_vpn_profile_path=str(paths.vpn_profile))
            started_vpn = vpn.bring_up(applied, str(profile))
        persist(paths, _persisted_values(applied))
        if token:
            remember_token(paths, token)
        mark_connected(paths)
    except BaseException:
        if started_vpn and vpn is not None:
            vpn.stop(applied)
        raise
    logger.info(
        "Connected as QPU %s (%s, %d qubits, target %s).",
        applied.qpu_id,
        applied.qpu_display_name,
        applied.num_qubits,
        applied.native_gate_set,
    )
    return applied


def legacy_dir() -> Path:
    """Where the first runtime kept its files."""
    return Path(tempfile.gettempdir())


def load_node_settings(*, overrides: Mapping[str, Any] | None = None, site: str | None = None) -> Settings:
    """Settings with the persisted layer in place (importing the first runtime's files once)."""
    first = load_settings(overrides=overrides, site=site)
    persisted = load_persisted(first.state_dir, legacy_dir=legacy_dir())
    if persisted is None:
        return first
    return load_settings(persisted=persisted, overrides=overrides, site=site)
