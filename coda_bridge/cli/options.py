"""What the commands share: settings loaders, common options, and the unrecoverable-exit error."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from ..errors import CodaError, ConfigError
from ..ops.exits import EX_CONFIG
from ..trust import SAFE_PATH_FLAG
from ..urls import safe_url

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DEVCLOUD_URL",
    "BadSetting",
    "Unrecoverable",
    "check_http_url",
    "check_redis_urls",
    "host_option",
    "node_settings",
    "plain_settings",
    "port_option",
    "redis_errors",
    "require_credentials",
    "require_dashboard",
    "require_executor",
    "safe_url",
    "site_option",
    "token_option",
]

#: Default address of the local cloud simulator (``coda-bridge devcloud``).
DEFAULT_DEVCLOUD_URL = "http://127.0.0.1:8765"


class Unrecoverable(CodaError):
    """A process cannot work as configured; it exits with ``EX_CONFIG`` so it is not restarted."""

    exit_code = EX_CONFIG


class BadSetting(ConfigError):
    """A setting's value cannot work at all (a malformed URL); exits ``EX_CONFIG``."""

    exit_code = EX_CONFIG


def node_settings(site: str | None = None, **overrides: Any) -> Any:
    """Settings with the persisted identity layer."""
    from ..identity.connect import load_node_settings  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    return load_node_settings(overrides=overrides, site=site)


def plain_settings(site: str | None = None) -> Any:
    """Settings without the persisted layer: enough to find the state directory."""
    from ..settings import load_settings  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    return load_settings(site=site)


def check_redis_urls(settings: Any, fields: tuple[str, ...] = ("broker_url", "redis_url")) -> None:
    """The settings' own check (:meth:`~coda_bridge.settings.Settings.check_redis_urls`, exit 78)."""
    settings.check_redis_urls(fields)


def require_executor(settings: Any) -> None:
    """Refuse (exit 78) a start with no executor configured or discovered: it would answer no job."""
    from ..errors import ExecutorError  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..executors.resolve import executor_spec  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    try:
        executor_spec(settings)
    except ExecutorError as exc:
        raise BadSetting(str(exc)) from None


def require_dashboard(settings: Any) -> None:
    """Refuse (exit 78) a start whose dashboard the probes app would refuse: before any part connects."""
    if not settings.dashboard_enabled:
        return
    from ..web.probes_app import check_dashboard  # noqa: PLC0415 - CLI start-up: only a node with the dashboard loads the web app here

    try:
        check_dashboard(settings)
    except ConfigError as exc:
        raise BadSetting(str(exc)) from None


def require_credentials(settings: Any, token: str | None) -> None:
    """Refuse (exit 78) a start that could never connect: no token, no persisted or configured identity."""
    from ..identity.connect import NO_CREDENTIALS  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    if token or settings.node_token_value or settings.has_identity:
        return
    raise BadSetting(NO_CREDENTIALS)


def check_http_url(url: str, setting: str) -> None:
    """Refuse a URL that is not ``http(s)://host[:port]...``, naming ``setting`` (exit 78)."""
    problem = None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "it must start with http:// or https://"
        elif not parts.hostname:
            problem = "it names no host"
    if problem:
        raise BadSetting(f"{setting} {safe_url(url)!r} is not a valid URL: {problem}")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


@contextlib.contextmanager
def redis_errors(what: str, url: str, fix: str = "") -> Iterator[None]:
    """Turn a Redis failure (or the socket error under it) into one :class:`CodaError` naming the server.

    ``what`` names the server (``"the broker"``), ``url`` is shown without its password.
    """
    import redis  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    try:
        yield
    except redis.AuthenticationError as exc:
        raise CodaError(f"{what} at {safe_url(url)} refused our credentials ({_reason(exc)})") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        hint = f"; {fix}" if fix else ""
        raise CodaError(f"{what} at {safe_url(url)} does not answer ({_reason(exc)}){hint}") from None
    except redis.RedisError as exc:
        raise CodaError(f"{what} at {safe_url(url)} failed: {_reason(exc)}") from None


host_option = click.option("--host", "-H", help="Address of the probes app (overrides CODA_HOST).")
port_option = click.option("--port", "-p", type=int, help="Port of the probes app (overrides CODA_PORT).")
site_option = click.option(
    "--site", help="Site table of the settings file to use (sets CODA_ENV); an unknown site exits 78."
)


def token_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--token`` (or ``CODA_NODE_TOKEN``) and ``--token-file``; the command gets one ``token``."""

    def resolve(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        if value is not None:
            ctx.meta["coda_token_file"] = value
        return value

    command = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        is_eager=True,  # read before --token, whatever the order on the command line
        callback=resolve,
        help="File holding the one-time node token (keep it 0600).",
    )(command)
    return click.option(
        "--token",
        "-t",
        envvar="CODA_NODE_TOKEN",
        show_envvar=True,
        callback=_token_value,
        help="One-time node token (first start only); --token-file or the variable keep it out of ps.",
    )(command)


def _token_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The token, from --token-file when given; a token typed as --token or -t leaves this process's argv."""
    path = ctx.meta.get("coda_token_file")
    if path is not None:
        value = read_token_file(path)
    if value:
        rest = without_token(sys.argv[1:], _flag_letters(ctx))
        if rest is not None:
            hide_token(value, rest)
    return value


def _flag_letters(ctx: click.Context) -> frozenset[str]:
    """The command's one-letter options without a value (``-d``, ``-h``): they may share a ``-t`` cluster."""
    letters: set[str] = set()
    for param in ctx.command.get_params(ctx):
        if isinstance(param, click.Option) and param.is_flag:
            letters.update(o[1] for o in param.opts + param.secondary_opts if len(o) == 2 and o[1] != "-")
    return frozenset(letters)


def without_token(args: list[str], flags: frozenset[str] = frozenset()) -> list[str] | None:
    """``args`` without a typed token (``--token X``, ``--token=X``, ``-t X``, ``-tX``, ``-dt X``), or None.

    ``flags`` are the one-letter options that take no value, which may come before ``t`` in a
    cluster of short options; ``None`` means no token was typed.
    """
    kept: list[str] = []
    typed = skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--":
            kept.extend(args[index:])
            break
        elif arg == "--token":
            typed = skip = True
        elif arg.startswith("--token="):
            typed = True
        elif arg.startswith("-") and not arg.startswith("--") and "t" in arg:
            head, _, value = arg[1:].partition("t")
            if not set(head) <= flags:
                kept.append(arg)  # a "t" inside another option's value, such as -Hlocalhost
                continue
            typed, skip = True, not value
            if head:
                kept.append(f"-{head}")
        else:
            kept.append(arg)
    return kept if typed else None


def read_token_file(path: Path) -> str:
    """The token in ``path`` (its first line), refusing a missing or empty file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BadSetting(f"--token-file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadSetting(f"--token-file {path} is not text") from None
    if not text:
        raise BadSetting(f"--token-file {path} is empty")
    if path.stat().st_mode & 0o077:
        logger.warning("--token-file %s can be read by other users; keep it 0600.", path)
    return text.splitlines()[0].strip()


def hide_token(token: str, args: list[str]) -> None:
    """Start this command again as ``args``, the token in its environment: ``/proc/<pid>/cmdline`` is public.

    Every process of the node descends from this one, so none of them shows
    the token either.
    """
    env = {**os.environ, "CODA_NODE_TOKEN": token}
    os.execve(sys.executable, [sys.executable, SAFE_PATH_FLAG, "-m", "coda_bridge", *args], env)
