"""Node identity: provision with a one-time token, or reconnect with the node's own JWT.

Every start talks to the connect endpoint (PROTOCOL.md 1.1); the bundle
it answers is checked, applied to the settings and persisted (1.2).
Identity always comes from the cloud; cloud-provided addresses, paths and
the VPN block fill what the operator did not set.  A bundle may not move
the node off the cloud's origin (unless ``allowed_cloud_origins`` lists
the new one), hand it a weak key, or set values that would spin a loop.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..cloud.http_client import CloudClient
from ..cloud.origins import OriginError, base_origin, origins_of, sent_origin
from ..cloud.signing import Signer, public_key_pem
from ..errors import AuthError, ConfigError, NodeError
from ..settings import Settings, load_settings
from .credentials import (
    StatePaths,
    check_room,
    ensure_state_dir,
    load_persisted,
    mark_connected,
    persist,
    remember_token,
    save_patiently,
    token_was_used,
)

__all__ = [
    "VpnControl",
    "apply_bundle",
    "check_bundle",
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
#: Longest API path a bundle may set, in characters.
MAX_PATH_CHARS = 512
#: Longest private key a bundle may carry, in PEM characters (RSA-4096 PKCS#8 is about 3,300).
MAX_KEY_PEM_CHARS = 16_384
#: Weakest RSA key the node signs with, in bits (PROTOCOL.md 1: the cloud issues RSA-2048).
MIN_RSA_KEY_BITS = 2048
#: Largest OpenVPN profile a bundle may carry, in characters (inline certificates take a few KiB).
MAX_VPN_PROFILE_CHARS = 131_072
#: Shortest VPN check interval a bundle may set, in seconds (a tiny one would spin the check loop).
MIN_VPN_CHECK_INTERVAL_SEC = 1.0
#: Longest VPN check interval a bundle may set, in seconds.
MAX_VPN_CHECK_INTERVAL_SEC = 3600.0
#: Most VPN probe targets a bundle may list.
MAX_PROBE_TARGETS = 16
#: Longest VPN probe target URL, in characters.
MAX_PROBE_URL_CHARS = 2048

_PATH = re.compile(r"/?[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
_INTERFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # a Linux interface name (IFNAMSIZ 16 with its NUL)

NO_VPN_PROFILE = (
    "the cloud requires the VPN but its connect answer has no VPN profile: check the VPN "
    "infrastructure's status in the Coda admin panel, "
    "or run the tunnel yourself with CODA_NODE_AUTO_VPN=false"
)

NO_CREDENTIALS = (
    "no credentials: pass --token (or set CODA_NODE_TOKEN) with a node token from the Coda cloud, "
    "or set CODA_JWT_PRIVATE_KEY, CODA_JWT_KEY_ID and CODA_QPU_ID"
)


class VpnControl(Protocol):
    """What the connect step needs from the VPN manager."""

    def restore(self, settings: Settings) -> bool:
        """Before a reconnect: start the saved profile unless a tunnel is up; True if it started one.

        Raises :class:`ConfigError` when the VPN is required and no profile was saved.
        """

    def bring_up(self, settings: Settings, profile: str) -> bool:
        """Validate and write ``profile``, start OpenVPN unless a tunnel is up; True if it started one."""

    def stop(self, settings: Settings) -> None:
        """Stop the OpenVPN daemon this node started, if any."""


def machine_fingerprint(settings: Settings) -> str:
    """``{hostname}-{mac as integer}`` unless configured (or persisted)."""
    return settings.node_machine_fingerprint or f"{socket.gethostname()}-{uuid.getnode()}"


def node_signer(settings: Settings, *, clock: Callable[[], float] | None = None) -> Signer:
    """The signer for this node's identity, or :class:`ConfigError` saying what is missing.

    ``clock`` is the time tokens are signed on (the cloud's, see :class:`~..cloud.clock.CloudClock`).
    """
    key, kid, qpu_id = settings.jwt_private_key_value, settings.jwt_key_id, settings.qpu_id
    if not (key and kid and qpu_id):
        raise ConfigError(NO_CREDENTIALS)
    return Signer(key, kid, qpu_id) if clock is None else Signer(key, kid, qpu_id, clock=clock)


def _required(bundle: Mapping[str, Any], field: str) -> Any:
    value = bundle.get(field)
    if value is None or value == "":
        raise NodeError(f"cloud bundle is missing the required field {field!r}")
    return value


def _bad(field: str, why: str) -> NodeError:
    return NodeError(f"cloud bundle has a bad {field}: {why}")


def _check_key(pem: object) -> None:
    """The bundle's key is RSA of at least :data:`MIN_RSA_KEY_BITS`; :class:`AuthError` otherwise."""
    if not isinstance(pem, str) or len(pem) > MAX_KEY_PEM_CHARS:
        raise AuthError(
            f"private key from the cloud is not a PEM text of at most {MAX_KEY_PEM_CHARS} characters"
        )
    public = serialization.load_pem_public_key(public_key_pem(pem).encode())  # AuthError: unreadable, not RSA
    bits = public.key_size if isinstance(public, rsa.RSAPublicKey) else 0
    if bits < MIN_RSA_KEY_BITS:
        raise AuthError(
            f"private key from the cloud is RSA-{bits}; at least RSA-{MIN_RSA_KEY_BITS} is required"
        )


def _check_base(settings: Settings, field: str, value: object) -> str:
    """A base URL on the node's current origin, or on one ``allowed_cloud_origins`` lists."""
    if not isinstance(value, str):
        raise _bad(field, "not a string")
    try:
        moved, own = base_origin(value), base_origin(settings.webapp_url)
        allowed = origins_of(settings.allowed_cloud_origins, "allowed_cloud_origins")
    except OriginError as exc:
        raise _bad(field, str(exc)) from None
    if moved != own and moved not in allowed:
        raise NodeError(
            f"cloud bundle moves the cloud from {own} to {moved} ({field}); "
            "refused unless allowed_cloud_origins lists it"
        )
    return value


def _check_path(settings: Settings, field: str, value: object) -> None:
    """A plain API path that, joined to ``webapp_url``, stays on its origin."""
    why = f"not a path of at most {MAX_PATH_CHARS} characters on the cloud's origin"
    if not isinstance(value, str) or len(value) > MAX_PATH_CHARS or not _PATH.fullmatch(value):
        raise _bad(field, why)
    if value.startswith("//") or "://" in value:
        raise _bad(field, why)
    try:
        stays = sent_origin(settings.url(value)) == base_origin(settings.webapp_url)
    except OriginError:
        stays = False
    if not stays:
        raise _bad(field, why)


def _check_interval(value: object) -> None:
    in_range = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and MIN_VPN_CHECK_INTERVAL_SEC <= value <= MAX_VPN_CHECK_INTERVAL_SEC
    )
    if not in_range:
        shown = repr(value) if isinstance(value, int | float) else f"a {type(value).__name__}"
        raise _bad(
            "vpn.check_interval_sec",
            f"{shown} is not a number of seconds from {MIN_VPN_CHECK_INTERVAL_SEC:g} "
            f"to {MAX_VPN_CHECK_INTERVAL_SEC:g}",
        )


def _check_vpn(vpn: object) -> None:
    if vpn is None:
        return
    if not isinstance(vpn, Mapping):
        raise _bad("vpn", "not an object")
    if vpn.get("required") is not None and not isinstance(vpn["required"], bool):
        raise _bad("vpn.required", "not true or false")
    hint = vpn.get("interface_hint")
    if hint not in (None, "") and not (isinstance(hint, str) and _INTERFACE.fullmatch(hint)):
        raise _bad("vpn.interface_hint", "not a network interface name")
    if vpn.get("check_interval_sec") is not None:
        _check_interval(vpn["check_interval_sec"])
    targets = vpn.get("probe_targets")
    if targets is not None:
        fits = isinstance(targets, list | tuple) and len(targets) <= MAX_PROBE_TARGETS
        if not fits or not all(isinstance(t, str) and len(t) <= MAX_PROBE_URL_CHARS for t in targets):
            raise _bad("vpn.probe_targets", f"not a list of at most {MAX_PROBE_TARGETS} URLs")
    profile = vpn.get("client_profile_ovpn")
    if profile is not None:
        if not isinstance(profile, str):
            raise _bad("vpn.client_profile_ovpn", "not a text")
        if len(profile) > MAX_VPN_PROFILE_CHARS:
            raise _bad(
                "vpn.client_profile_ovpn",
                f"{len(profile)} characters, more than {MAX_VPN_PROFILE_CHARS}",
            )


def check_bundle(settings: Settings, bundle: Mapping[str, Any]) -> None:
    """Refuse a connect answer before anything of it is applied.

    The base URL and paths the bundle would set (the operator's own values
    win, so those are not checked) must stay on ``webapp_url``'s origin or
    move to one ``allowed_cloud_origins`` lists; the key must be RSA of at
    least 2048 bits; the VPN block must have sane types and sizes.  Raises
    :class:`NodeError` (:class:`AuthError` for the key) naming the field,
    never a secret value.
    """
    operator = settings.model_fields_set
    if bundle.get("jwt_private_key"):
        _check_key(bundle["jwt_private_key"])
    redis_url = bundle.get("redis_url")
    if redis_url and (
        not isinstance(redis_url, str) or urlsplit(redis_url).scheme not in ("redis", "rediss")
    ):
        raise _bad("redis_url", "not a redis:// or rediss:// URL")
    target = settings
    field = "cloud_base_url" if bundle.get("cloud_base_url") else "webapp_url"
    if bundle.get(field) and "webapp_url" not in operator:
        target = settings.model_copy(update={"webapp_url": _check_base(settings, field, bundle[field])})
    for name in PATH_FIELDS:
        if bundle.get(name) and name not in operator:
            _check_path(target, name, bundle[name])
    _check_vpn(bundle.get("vpn"))


def apply_bundle(settings: Settings, bundle: Mapping[str, Any], *, fingerprint: str) -> Settings:
    """The settings after the cloud's bundle: identity always, the rest where the operator is silent.

    The bundle is checked first (:func:`check_bundle`); a refused one changes nothing.
    """
    check_bundle(settings, bundle)
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
    """Provision (token) or reconnect (JWT), apply the bundle, bring up the VPN, persist; return settings.

    A reconnect of a node with persisted credentials first brings its saved tunnel up (``vpn.restore``).
    """
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

    client = client or CloudClient(settings)
    bearer: str | Callable[[], str]
    if token:
        check_room(paths)  # before the token is spent: the identity it buys must fit on disk
        bearer, mode = token, "provisioning"
    else:  # signed per attempt, on the cloud's time as the last answer told it (a missing key fails here)
        bearer, mode = node_signer(settings, clock=client.clock.now).sign, "reconnect"
    started_vpn = False
    applied = settings
    if not token and vpn is not None and paths.config.exists():
        # as the first runtime: the saved tunnel first, the cloud may be reachable only through it
        started_vpn = vpn.restore(settings)
    try:
        logger.info("Connecting to %s (%s).", settings.url(settings.connect_path), mode)
        bundle = client.connect(bearer, body)
        if mode == "provisioning" and not bundle.get("jwt_private_key"):
            raise NodeError("cloud bundle is missing the required field 'jwt_private_key' after provisioning")
        applied = apply_bundle(settings, bundle, fingerprint=fingerprint)
        _ = node_signer(applied)  # a garbled key from the cloud fails here, before anything is written

        vpn_block = bundle.get("vpn") if isinstance(bundle.get("vpn"), Mapping) else {}
        profile = vpn_block.get("client_profile_ovpn") if isinstance(vpn_block, Mapping) else None
        if applied.vpn_required and applied.node_auto_vpn and not profile:
            raise NodeError(NO_VPN_PROFILE)
        if applied.vpn_required and applied.node_auto_vpn and profile and vpn is not None:
            applied = applied.replace(node_vpn_profile_path=str(paths.vpn_profile))
            started_vpn = vpn.bring_up(applied, str(profile)) or started_vpn
        save_patiently(paths, lambda: _save(paths, applied, token))
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


def _save(paths: StatePaths, applied: Settings, token: str | None) -> None:
    """Persist the identity, the token's mark and the connect's time."""
    persist(paths, _persisted_values(applied))
    if token:
        remember_token(paths, token)
    mark_connected(paths)


def legacy_dir() -> Path:
    """Where the first runtime kept its files."""
    return Path(tempfile.gettempdir())


def load_node_settings(*, overrides: Mapping[str, Any] | None = None, site: str | None = None) -> Settings:
    """Settings with the persisted layer in place (importing the first runtime's files once)."""
    return load_settings(persisted=_persisted_layer, overrides=overrides, site=site)


def _persisted_layer(state_dir: Path) -> dict[str, Any] | None:
    """The persisted layer of the node whose state is in ``state_dir`` (for :func:`load_settings`)."""
    return load_persisted(state_dir, legacy_dir=legacy_dir())
