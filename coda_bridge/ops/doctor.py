"""``coda-bridge doctor``: check what a node needs, one line per check, each ``ok`` or a fix to try.

Nothing here changes anything: the checks read settings and credential
files, open connections with short timeouts, and look at the VPN.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from ..cloud.clock import SKEW_WARNING_SEC, CloudClock, parse_http_date
from ..cloud.http_client import connect_headers_for
from ..errors import CodaError, ConfigError
from ..executors.noop import NoopExecutor
from ..executors.resolve import resolve_executor
from ..identity.connect import load_node_settings
from ..identity.credentials import StatePaths, ensure_state_dir, load_persisted, read_private
from ..queueing.broker_client import broker_client, sentinel_primary
from ..queueing.sizing import memory_finding
from ..settings import SECRET_FIELDS, Settings, load_settings, selected_site, setting_layers, settings_files
from ..state.node_state import NodeState

__all__ = [
    "PING_TIMEOUT_SEC",
    "Check",
    "check_coda_command",
    "check_executor_boot",
    "failure_reason",
    "run_checks",
    "setting_lines",
    "shown_url",
]

#: Timeout of each network probe: doctor must answer quickly even when everything is down.
PROBE_TIMEOUT_SEC = 5.0
#: Timeout of each Redis PING.
PING_TIMEOUT_SEC = 2.0
#: The short command name that coda-bridge and coda-node both install.
SHORT_COMMAND = "coda"
#: How much of a program on PATH is read to tell whether it is our console script (bytes).
SCRIPT_HEAD_BYTES = 4096


@dataclass(frozen=True)
class Check:
    """One result: ``ok`` is False when ``detail`` says what to fix; a ``warning`` is ok but worth a look."""

    name: str
    ok: bool
    detail: str
    warning: bool = False

    def line(self) -> str:
        if not self.ok:
            return f"FIX: {self.name}: {self.detail}"
        return f"warn {self.name}: {self.detail}" if self.warning else f"ok   {self.name}: {self.detail}"


def shown_url(url: str) -> str:
    """``url`` without user info (Redis URLs carry passwords there)."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    netloc = parts.netloc.rpartition("@")[2]  # as written: a Sentinel URL lists several host:port
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def failure_reason(exc: BaseException) -> str:
    """An exception in one short line (its type when it says nothing)."""
    text = " ".join(str(exc).split())
    return text[:160] if text else type(exc).__name__


# -- settings and credentials --


def check_settings(overrides: dict[str, Any], site: str | None) -> tuple[Settings | None, list[Check]]:
    """The node's settings (with persisted state) and what was wrong loading them."""
    try:
        settings = load_node_settings(overrides=overrides, site=site)
    except ConfigError as exc:
        problem = Check("credentials", False, str(exc))
        try:
            return load_settings(overrides=overrides, site=site), [problem]
        except ConfigError as inner:
            return None, [Check("settings", False, str(inner))]
    return settings, [Check("settings", True, f"loaded ({_site_and_files(site)})")]


def _site_and_files(site: str | None) -> str:
    files = [str(path) for path in settings_files() if path.is_file()]
    where = ", ".join(files) if files else "no settings file"
    return f"site {selected_site(site) or 'default'}, from {where}"


#: Settings whose values doctor never shows, only whether they are set.
_HIDDEN = ("dashboard_password",)
#: Settings holding URLs that may carry a password.
_URLS = ("broker_url", "redis_url")


def setting_lines(
    settings: Settings, overrides: dict[str, Any] | None = None, site: str | None = None
) -> list[str]:
    """``name = value  (layer)`` for every setting, secrets hidden, passwords out of URLs."""
    try:
        persisted = load_persisted(settings.state_dir)
    except ConfigError:
        persisted = None
    layers = setting_layers(site=site, persisted=persisted, overrides=overrides)
    lines = []
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if field in SECRET_FIELDS or field in _HIDDEN:
            shown = "(set, hidden)" if value else "(unset)"
        elif value is None:
            shown = "(unset)"
        elif field in _URLS:
            shown = shown_url(str(value))
        else:
            shown = str(value)
        lines.append(f"{field} = {shown}  ({layers[field]})")
    return lines


def check_credential_files(settings: Settings) -> Iterator[Check]:
    """Every persisted credential file is ``0600``, owned by us, not a symlink; the identity is known."""
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


def check_endpoint(
    name: str,
    url: str,
    probe: Callable[..., Any] = requests.head,
    headers: dict[str, str] | None = None,
) -> Check:
    """Reachable means any HTTP answer at all (401 and 405 included): DNS, route and TLS work.

    ``headers`` are the connect headers, for URLs on the cloud's own origin (a protected staging cloud).
    """
    try:
        response = probe(url, timeout=PROBE_TIMEOUT_SEC, allow_redirects=False, headers=headers or {})
    except requests.RequestException as exc:
        return Check(
            name,
            False,
            f"{shown_url(url)} is unreachable ({type(exc).__name__}); "
            "check CODA_WEBAPP_URL, DNS, the firewall and the VPN",
        )
    return Check(name, True, f"{shown_url(url)} answers (HTTP {response.status_code})")


def check_redis(name: str, url: str | None, fix: str) -> Check:
    """PING with short timeouts; through Sentinel (a ``redis+sentinel://`` broker), the primary named."""
    if not url:
        return Check(name, False, fix)
    client = broker_client(url, socket_timeout=PING_TIMEOUT_SEC, socket_connect_timeout=PING_TIMEOUT_SEC)
    try:
        primary = sentinel_primary(client)
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return Check(name, False, f"{shown_url(url)} does not answer PING ({failure_reason(exc)}); {fix}")
    finally:
        client.close()
    if primary is not None:
        host, port = primary
        return Check(name, True, f"{shown_url(url)}: sentinels name primary {host}:{port}; it answers PING")
    return Check(name, True, f"{shown_url(url)} answers PING")


def check_clock(settings: Settings, probe: Callable[..., Any] = requests.head) -> Check | None:
    """This host's clock against the cloud's ``Date`` (tokens are signed on its time); None: unreachable."""
    clock = CloudClock()
    sent = clock.local()
    try:
        response = probe(
            settings.webapp_url,
            headers=connect_headers_for(settings, settings.webapp_url),
            timeout=PROBE_TIMEOUT_SEC,
            allow_redirects=False,
        )
    except requests.RequestException:  # the webapp check says so
        return None
    date = response.headers.get("Date")
    clock.observe(date, sent, clock.local())
    offset = clock.offset_sec
    if parse_http_date(date) is None:
        return Check("clock", True, "the cloud sends no usable Date header; keep NTP on", warning=True)
    if abs(offset) <= SKEW_WARNING_SEC:
        return Check("clock", True, f"within {abs(offset):.0f} s of the cloud's (Date header)")
    side = "ahead of" if offset < 0 else "behind"
    return Check(
        "clock",
        True,
        f"{abs(offset):.0f} s {side} the cloud's; the node signs its tokens on the cloud's time, "
        "but fix the host's time (NTP: `timedatectl set-ntp true`)",
        warning=True,
    )


def check_broker_memory(url: str | None) -> Check | None:
    """The broker's maxmemory and policy (``None`` when it does not answer: the PING check says so)."""
    if not url:
        return None
    client = broker_client(url, socket_timeout=PING_TIMEOUT_SEC, socket_connect_timeout=PING_TIMEOUT_SEC)
    try:
        info = client.info("memory")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    finding = memory_finding(info)
    return Check("broker memory", not finding.evicting, finding.detail, warning=finding.warning)


# -- executor and VPN --


def check_executor(settings: Settings) -> Check:
    quiet = logging.getLogger("coda_bridge.executors")  # its warnings would repeat this line
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        executor, origin = resolve_executor(settings)
    except CodaError as exc:
        return Check("executor", False, f"{exc}; {_executor_fix(settings)}")
    finally:
        quiet.setLevel(level)
    if isinstance(executor, NoopExecutor):
        return Check(
            "executor",
            False,
            f"{origin}: jobs would get all-zero counts; set CODA_EXECUTOR_FACTORY=module:create_executor",
        )
    return Check("executor", True, origin)


def _executor_fix(settings: Settings) -> str:
    """What to edit when the executor cannot be built."""
    if settings.device_config:
        return f"fix the device config {settings.device_config} or CODA_EXECUTOR_FACTORY"
    return "fix CODA_EXECUTOR_FACTORY (module:attribute) or the device config (CODA_DEVICE_CONFIG)"


def check_executor_boot(settings: Settings) -> Check | None:
    """The build failure a jobs worker recorded when it stopped at boot; ``None`` when there is none."""
    if not settings.qpu_id:
        return None
    try:
        client = broker_client(
            settings.broker_url, socket_timeout=PING_TIMEOUT_SEC, socket_connect_timeout=PING_TIMEOUT_SEC
        )
    except ValueError:  # a malformed URL: the broker check names it
        return None
    try:
        failure = NodeState(client, settings.qpu_id).executor_failure()
    except (redis.RedisError, OSError):  # the broker check says so
        return None
    finally:
        client.close()
    if failure is None:
        return None
    return Check(
        "executor worker",
        False,
        f"the jobs worker stopped at {failure['at'] or 'its boot'} because the executor cannot be built "
        f"({failure['error']}); {_executor_fix(settings)}, then restart the node (jobs wait until then)",
    )


def _is_coda_bridge_script(path: str) -> bool:
    """Whether the program at ``path`` is coda-bridge's console script (it imports coda_bridge)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SCRIPT_HEAD_BYTES)
    except OSError:
        return False
    return b"coda_bridge" in head


def check_coda_command(which: Callable[[str], str | None] = shutil.which) -> Check | None:
    """``coda`` is ours too, but coda-node installs a ``coda`` of its own: say which one PATH finds."""
    found = which(SHORT_COMMAND)
    if found is None:
        return None
    if _is_coda_bridge_script(found):
        return Check("coda command", True, f"{found} is coda-bridge's")
    return Check(
        "coda command",
        True,
        f"`{SHORT_COMMAND}` on PATH is {found}, another program (coda-node installs one too); "
        "use `coda-bridge`, the name that always works",
        warning=True,
    )


def check_vpn(settings: Settings) -> Iterator[Check]:
    if not settings.vpn_required:
        yield Check("vpn", True, "not required (https mode, or CODA_VPN_REQUIRED=false)")
        return
    try:
        from ..vpn.guard import tun_interfaces  # noqa: PLC0415 - doctor reports VPN support that cannot load
        from ..vpn.openvpn import OpenVPNManager  # noqa: PLC0415 - doctor reports VPN support that cannot load
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


# -- all together --


def run_checks(overrides: dict[str, Any] | None = None, site: str | None = None) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    overrides = overrides or {}
    settings, checks = check_settings(overrides, site)
    if settings is None:
        return checks
    checks.extend(check_credential_files(settings))
    for name, url in (
        ("webapp", settings.webapp_url),
        ("connect endpoint", settings.url(settings.connect_path)),
        ("heartbeat endpoint", settings.url(settings.heartbeat_path)),
    ):
        checks.append(check_endpoint(name, url, headers=connect_headers_for(settings, url)))
    checks.extend(check for check in (check_clock(settings),) if check)
    checks.append(check_executor(settings))
    checks.extend(check for check in (check_executor_boot(settings), check_coda_command()) if check)
    checks.append(check_redis("broker", settings.broker_url, "start the local Redis or set CODA_BROKER_URL"))
    checks.extend(check for check in (check_broker_memory(settings.broker_url),) if check)
    checks.append(
        check_redis(
            "cloud redis",
            settings.redis_url,
            "the cloud names its job Redis when the node connects: start the node once with a token",
        )
    )
    checks.extend(check_vpn(settings))
    return checks
