"""Persisted node credentials (PROTOCOL.md section 1.2), kept safe on disk.

The state directory is ``0700``; every file in it is ``0600``, written
atomically (temporary file, fsync, rename) and read without following
symlinks.  A file that is wider, owned by someone else, or a symlink is
refused with a message that says how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backoff import Backoff
from ..errors import ConfigError

__all__ = [
    "IDENTITY_ROOM_BYTES",
    "PERSISTED_FIELDS",
    "StatePaths",
    "check_room",
    "connected_since",
    "ensure_state_dir",
    "load_persisted",
    "mark_connected",
    "persist",
    "read_private",
    "remember_token",
    "reset_legacy",
    "reset_state",
    "save_patiently",
    "token_was_used",
    "write_private",
]

logger = logging.getLogger(__name__)

#: The fields of the config file, exactly those of the first runtime.
PERSISTED_FIELDS = (
    "qpu_id",
    "qpu_display_name",
    "native_gate_set",
    "num_qubits",
    "jwt_key_id",
    "jwt_private_key_path",
    "redis_url",
    "webapp_url",
    "connect_path",
    "register_path",
    "heartbeat_path",
    "webhook_path",
    "vpn_required",
    "vpn_check_interval_sec",
    "vpn_interface_hint",
    "vpn_probe_targets",
    "node_auto_vpn",
    "node_vpn_profile_path",
    "node_machine_fingerprint",
)
#: File mode of everything written in the state directory.
FILE_MODE = 0o600
#: Mode of the state directory itself.
DIR_MODE = 0o700
#: The first runtime's file names, in the system temporary directory.
LEGACY_CONFIG_NAME = "coda.config"
LEGACY_KEY_NAME = "coda-private-key"
#: The first runtime's default VPN profile (it holds the VPN client's key), in the same directory.
LEGACY_VPN_PROFILE_NAME = "coda-node.ovpn"
#: Room the identity takes in the state directory: the largest key a bundle may carry (16 KiB), the
#: config and the marks, each written beside its old copy before the rename.
IDENTITY_ROOM_BYTES = 48 * 1024
#: First and longest pause between attempts to save an identity the disk did not take.
SAVE_RETRY_START_SEC = 1.0
SAVE_RETRY_MAX_SEC = 30.0
#: Name of the probe file :func:`check_room` writes (and removes).
ROOM_PROBE_NAME = ".room-probe"


@dataclass(frozen=True)
class StatePaths:
    """Every file coda-bridge keeps in its state directory, by job."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "coda.config"

    @property
    def private_key(self) -> Path:
        return self.root / "coda-private-key"

    @property
    def token_marker(self) -> Path:
        return self.root / "node-token.sha256"

    @property
    def connected(self) -> Path:
        """When the bridge last finished a connect (other processes of ``start`` wait for it)."""
        return self.root / "connected-at"

    @property
    def vpn_profile(self) -> Path:
        return self.root / "coda.ovpn"

    @property
    def openvpn_pid(self) -> Path:
        return self.root / "openvpn.pid"

    @property
    def openvpn_log(self) -> Path:
        return self.root / "openvpn.log"

    @property
    def daemon_pid(self) -> Path:
        return self.root / "coda-bridge.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "coda-bridge.log"

    def all_files(self) -> tuple[Path, ...]:
        return (
            self.config,
            self.private_key,
            self.token_marker,
            self.connected,
            self.vpn_profile,
            self.openvpn_pid,
            self.openvpn_log,
            self.daemon_pid,
            self.daemon_log,
        )


def ensure_state_dir(root: Path) -> StatePaths:
    """Create the state directory ``0700`` if needed; refuse one that others can read."""
    try:
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        info = root.stat()
    except OSError as exc:
        raise ConfigError(f"state directory {root} cannot be created: {exc.strerror}") from None
    if info.st_uid != os.geteuid():
        raise ConfigError(f"state directory {root} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"state directory {root} has mode {stat.S_IMODE(info.st_mode):04o}; "
            f"run `chmod 700 {root}` (credentials live there)"
        )
    return StatePaths(root)


def check_room(paths: StatePaths, size_bytes: int = IDENTITY_ROOM_BYTES) -> None:
    """Write and fsync a probe file of ``size_bytes``: :class:`ConfigError` when the disk does not take it.

    Run before a one-time token is sent: once the cloud answers, the token
    is spent, and an identity the disk cannot take would be lost with it.
    """
    probe = paths.root / ROOM_PROBE_NAME
    block = b"\0" * min(size_bytes, 8192)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            left = size_bytes
            while left > 0:
                left -= os.write(fd, block[:left])
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(
            f"state directory {paths.root} cannot take the node's identity ({size_bytes} bytes): "
            f"{exc.strerror}; free space on its filesystem (or set CODA_STATE_DIR) before starting "
            "with the token, which the cloud spends on the first answer"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def save_patiently(
    paths: StatePaths, save: Callable[[], None], *, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Run ``save`` until the disk takes it: an identity the cloud handed out is never dropped.

    The first failure is one WARNING naming the directory to free; the
    identity stays in memory and the attempts go on with backoff.
    """
    backoff = Backoff(SAVE_RETRY_START_SEC, SAVE_RETRY_MAX_SEC)
    failed = False
    while True:
        try:
            save()
        except OSError as exc:
            if not failed:
                logger.warning(
                    "The node's identity from the cloud cannot be saved in %s (%s); it is kept in memory "
                    "and saved as soon as there is room: free space on the filesystem of %s.",
                    paths.root,
                    exc.strerror or exc,
                    paths.root,
                )
                failed = True
            sleep(backoff.next_delay())
            continue
        if failed:
            logger.info("The node's identity is saved in %s.", paths.root)
        return


def write_private(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, replacing (never following) a symlink."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_private(path: Path) -> str | None:
    """Read a credential file, or ``None`` when absent; refuse symlinks, other owners, wide modes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if path.is_symlink():
            raise ConfigError(
                f"{path} is a symlink; credentials are only read from a regular file: "
                f"remove it and start again with a node token"
            ) from None
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"{path} belongs to uid {info.st_uid}, not to this user; refusing to use it")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path} has mode {mode:04o}, wider than 0600; run `chmod 600 {path}`")
        return handle.read()


def _load_pair(config_path: Path, fallback_key: Path) -> dict[str, Any] | None:
    text = read_private(config_path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path} does not hold a JSON object")
    key_path = Path(data.get("jwt_private_key_path") or fallback_key)
    key = read_private(key_path)
    if key is None:
        raise ConfigError(f"{config_path} names the private key {key_path}, which does not exist")
    values = {k: data[k] for k in PERSISTED_FIELDS if k in data and data[k] is not None}
    values["jwt_private_key"] = key
    return values


def _foreign(path: Path) -> str | None:
    """Why a file in the shared temporary directory is not this user's to import, or ``None``."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(info.st_mode):
        return "a symlink"
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}"
    return None


def _import_legacy(paths: StatePaths, legacy_dir: Path) -> dict[str, Any] | None:
    config, key = legacy_dir / LEGACY_CONFIG_NAME, legacy_dir / LEGACY_KEY_NAME
    if not (config.exists() or config.is_symlink()):
        return None
    # Any local user can write the temporary directory: files another user planted there are
    # neither imported nor a reason to refuse to start.
    for path in (config, key):
        why = _foreign(path)
        if why is not None and why != "missing":
            logger.warning("Ignoring the first runtime's file %s: it is %s, not this user's.", path, why)
            return None
    if not key.exists():
        return None
    values = _load_pair(config, key)
    if values is None:
        return None
    persist(paths, values)
    logger.info("Imported the first runtime's credentials from %s into %s.", legacy_dir, paths.root)
    return load_persisted(paths.root, legacy_dir=None)


def load_persisted(root: Path, *, legacy_dir: Path | None = None) -> dict[str, Any] | None:
    """The persisted settings layer (with ``jwt_private_key``), or ``None`` when nothing is persisted.

    With an empty state directory and the first runtime's files in
    ``legacy_dir`` (default: the system temporary directory), import them once.
    """
    paths = ensure_state_dir(root)
    values = _load_pair(paths.config, paths.private_key)
    if values is not None:
        values.pop("jwt_private_key_path", None)
        return values
    if legacy_dir is None:
        return None
    return _import_legacy(paths, legacy_dir)


def persist(paths: StatePaths, values: dict[str, Any]) -> None:
    """Write the key, then the config that names it; each ``0600``, each atomic."""
    key = values.get("jwt_private_key")
    if key:
        write_private(paths.private_key, str(key))
    config = {k: values.get(k) for k in PERSISTED_FIELDS}
    config["jwt_private_key_path"] = str(paths.private_key)
    write_private(paths.config, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def remember_token(paths: StatePaths, token: str) -> None:
    """Record (a hash of) the token this node provisioned with."""
    write_private(paths.token_marker, _token_digest(token) + "\n")


def token_was_used(paths: StatePaths, token: str) -> bool:
    """True when this node already provisioned with ``token`` (so a restart with it set reconnects)."""
    recorded = read_private(paths.token_marker)
    return recorded is not None and recorded.strip() == _token_digest(token)


def mark_connected(paths: StatePaths, ts: float | None = None) -> None:
    """Record that a connect of this start finished and its bundle is persisted."""
    write_private(paths.connected, f"{time.time() if ts is None else ts!r}\n")


def connected_since(paths: StatePaths, since: float) -> bool:
    """Whether a connect finished at or after ``since`` (a start's own time)."""
    text = read_private(paths.connected)
    try:
        return text is not None and float(text) >= since
    except ValueError:
        return False


def reset_state(root: Path) -> list[Path]:
    """Remove every file coda-bridge persisted; return what was removed."""
    removed = []
    for path in StatePaths(root).all_files():
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def reset_legacy(legacy_dir: Path) -> list[Path]:
    """Remove the first runtime's credentials and VPN profile from ``legacy_dir``; return what was removed.

    Else the next start without a token would import them again.  Only this user's regular files
    with the first runtime's fixed names go: never a symlink, another user's file, or a path
    named inside one of them (anyone can write the temporary directory).
    """
    removed = []
    for name in (LEGACY_CONFIG_NAME, LEGACY_KEY_NAME, LEGACY_VPN_PROFILE_NAME):
        path = legacy_dir / name
        why = _foreign(path)
        if why is not None:
            if why != "missing":
                logger.warning("Leaving the first runtime's file %s: it is %s, not this user's.", path, why)
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
