"""``coda-bridge doctor``: check what a node needs, one line per check, each ``ok`` or a fix to try.

Nothing here changes anything: the checks read settings and credential
files, open connections with short timeouts, and look at the VPN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from ..errors import CodaError, ConfigError
from ..settings import Settings

__all__ = ["Check", "queue_summary", "run_checks", "shown_url", "vpn_summary"]

#: Timeout of each network probe: doctor must answer quickly even when everything is down.
PROBE_TIMEOUT_SEC = 5.0
#: Timeout of each Redis PING.
PING_TIMEOUT_SEC = 2.0


@dataclass(frozen=True)
class Check:
    """One result: ``ok`` is False when ``detail`` says what to fix."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"ok   {self.name}: {self.detail}" if self.ok else f"FIX: {self.name}: {self.detail}"


def shown_url(url: str) -> str:
    """``url`` without user info (Redis URLs carry passwords there)."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] if text else type(exc).__name__


# -- settings and credentials --


def check_settings(overrides: dict[str, Any], site: str | None) -> tuple[Settings | None, list[Check]]:
    """The node's settings (with persisted state) and what was wrong loading them."""
    from ..identity.connect import load_node_settings
    from ..settings import load_settings

    try:
        settings = load_node_settings(overrides=overrides, site=site)
    except ConfigError as exc:
        problem = Check("credentials", False, str(exc))
        try:
            return load_settings(overrides=overrides, site=site), [problem]
        except ConfigError as inner:
            return None, [Check("settings", False, str(inner))]
    return settings, [Check("settings", True, f"loaded (site {site or 'default'})")]


def check_credential_files(settings: Settings) -> Iterator[Check]:
    """Every persisted credential file is ``0600``, owned by us, not a symlink; the identity is known."""
    from ..identity.credentials import StatePaths, ensure_state_dir, read_private

    try:
        paths = ensure_state_dir(settings.state_dir)
    except ConfigError as exc:
        yield Check("state directory", False, str(exc))
        return
    yield Check("state directory", True, f"{paths.root} (mode 0700)")
    for path in (paths.config, paths.private_key, paths.token_marker, paths.vpn_profile):
        if not path.exists() and not path.is_symlink():
            continue
        try:
            read_private(path)
        except ConfigError as exc:
            yield Check("credential file", False, str(exc))
        else:
            yield Check("credential file", True, f"{path} (mode 0600)")
    if settings.has_identity:
        yield Check("identity", True, f"QPU {settings.qpu_id} (key id {settings.jwt_key_id})")
    else:
        yield Check(
            "identity",
            False,
            f"no node identity in {StatePaths(settings.state_dir).root}: "
            "run `coda-bridge start --token <node token from the Coda cloud>`",
        )


# -- network --


def check_endpoint(name: str, url: str, probe: Callable[..., Any] = requests.head) -> Check:
    """Reachable means any HTTP answer at all (401 and 405 included): DNS, route and TLS work."""
    try:
        response = probe(url, timeout=PROBE_TIMEOUT_SEC, allow_redirects=False)
    except requests.RequestException as exc:
        return Check(
            name,
            False,
            f"{shown_url(url)} is unreachable ({type(exc).__name__}); "
            "check CODA_WEBAPP_URL, DNS, the firewall and the VPN",
        )
    return Check(name, True, f"{shown_url(url)} answers (HTTP {response.status_code})")


def check_redis(name: str, url: str | None, fix: str) -> Check:
    """PING with short timeouts."""
    if not url:
        return Check(name, False, fix)
    client = redis.Redis.from_url(
        url, socket_timeout=PING_TIMEOUT_SEC, socket_connect_timeout=PING_TIMEOUT_SEC
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return Check(name, False, f"{shown_url(url)} does not answer PING ({_reason(exc)}); {fix}")
    finally:
        client.close()
    return Check(name, True, f"{shown_url(url)} answers PING")


# -- executor and VPN --


def check_executor(settings: Settings) -> Check:
    from ..executors.noop import NoopExecutor
    from ..executors.resolve import resolve_executor

    quiet = logging.getLogger("coda_bridge.executors")  # its warnings would repeat this line
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        executor, origin = resolve_executor(settings)
    except CodaError as exc:
        return Check("executor", False, f"{exc}; fix CODA_EXECUTOR_FACTORY or the device config")
    finally:
        quiet.setLevel(level)
    if isinstance(executor, NoopExecutor):
        return Check(
            "executor",
            False,
            f"{origin}: jobs would get all-zero counts; set CODA_EXECUTOR_FACTORY=module:create_executor",
        )
    return Check("executor", True, origin)


def check_vpn(settings: Settings) -> Iterator[Check]:
    if not settings.vpn_required:
        yield Check("vpn", True, "not required (https mode, or CODA_VPN_REQUIRED=false)")
        return
    try:
        from ..vpn.guard import tun_interfaces
        from ..vpn.openvpn import OpenVPNManager
    except ImportError as exc:
        yield Check("vpn", False, f"the VPN support cannot be loaded ({exc})")
        return
    found = tun_interfaces(settings.vpn_interface_hint)
    if found:
        yield Check("vpn interface", True, ", ".join(found))
    else:
        hint = f" {settings.vpn_interface_hint}" if settings.vpn_interface_hint else ""
        yield Check(
            "vpn interface",
            False,
            f"no tunnel interface{hint} is up; `coda-bridge start` brings it up from the persisted "
            "profile, or start your own OpenVPN",
        )
    try:
        status = OpenVPNManager().status(settings)
    except CodaError as exc:
        yield Check("openvpn", False, str(exc))
        return
    if status["running"]:
        yield Check("openvpn", True, f"running (pid {status['pid']}, log {status['log_path']})")
    elif found:
        yield Check("openvpn", True, "not started by this node (a tunnel is up anyway)")
    else:
        yield Check("openvpn", False, f"not running; see {status['log_path']}")


# -- summaries for ``status`` --


def queue_summary(settings: Settings) -> str:
    """Messages waiting per queue, and dead-lettered results, for ``status``."""
    from ..broker.redis_broker import create_broker

    if not settings.qpu_id:
        return "unknown until the node is provisioned"
    reachable = check_redis("broker", settings.broker_url, "")
    if not reachable.ok:
        return f"broker unreachable: {reachable.detail.rstrip('; ')}"
    broker = create_broker(settings)
    try:
        sizes = broker.queue_sizes()
    except redis.RedisError as exc:
        return f"broker error: {exc}"
    finally:
        broker.close()
    waiting = ", ".join(f"{q} {n}" for q, n in sizes.items() if not q.endswith(".dead"))
    dead = ", ".join(f"{q[:-5]} {n}" for q, n in sizes.items() if q.endswith(".dead") and n)
    return f"{waiting} waiting" + (f"; dead-lettered: {dead}" if dead else "")


def vpn_summary(settings: Settings) -> str:
    """The tunnel interface, for ``status``."""
    if not settings.vpn_required:
        return "not required"
    try:
        from ..vpn.guard import tun_interfaces
    except ImportError:
        return "required (the VPN support is not installed)"
    found = tun_interfaces(settings.vpn_interface_hint)
    return ", ".join(found) if found else "required, but no tunnel interface is up"


# -- all together --


def run_checks(overrides: dict[str, Any] | None = None, site: str | None = None) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    overrides = overrides or {}
    settings, checks = check_settings(overrides, site)
    if settings is None:
        return checks
    checks.extend(check_credential_files(settings))
    checks.append(check_endpoint("webapp", settings.webapp_url))
    checks.append(check_endpoint("connect endpoint", settings.url(settings.connect_path)))
    checks.append(check_endpoint("heartbeat endpoint", settings.url(settings.heartbeat_path)))
    checks.append(check_executor(settings))
    checks.append(check_redis("broker", settings.broker_url, "start the local Redis or set CODA_BROKER_URL"))
    checks.append(
        check_redis(
            "cloud redis",
            settings.redis_url,
            "the cloud names its job Redis when the node connects: start the node once with a token",
        )
    )
    checks.extend(check_vpn(settings))
    return checks
