"""Commands over the node as a whole: ``start``, ``stop``, ``status``, ``logs``, ``stop-vpn``, ``reset``.

Each is a thin layer: ``start`` over :mod:`~coda_bridge.ops.supervisor`,
``stop``/``status``/``logs`` over :mod:`~coda_bridge.ops.daemon`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import CodaError, ConfigError
from ..logs import mask
from .options import (
    check_redis_urls,
    host_option,
    node_settings,
    plain_settings,
    port_option,
    require_credentials,
    require_dashboard,
    require_executor,
    site_option,
    token_option,
)

__all__ = ["logs", "reset", "start", "status", "stop", "stop_vpn"]


@click.command()
@token_option
@host_option
@port_option
@click.option("--daemon", "-d", is_flag=True, help="Run in the background; log to the state directory.")
@click.option(
    "--one-process",
    is_flag=True,
    help="Run bridge, workers and probes in threads of one process (a small lab PC).",
)
@site_option
def start(
    *,
    token: str | None,
    host: str | None,
    port: int | None,
    daemon: bool,
    one_process: bool,
    site: str | None,
) -> None:
    """Run the whole node: bridge, workers and probes app, supervised.

    The first Ctrl-C or SIGTERM drains (jobs in flight finish, within
    shutdown_drain_timeout_sec); a second one stops at once.  With
    --one-process every part runs in one process, with the same guarantees.

    \b
    Examples:
      coda-bridge start --token-file node.token   # first start: provision
      coda-bridge start -d                         # later starts, in the background
      coda-bridge start --site lab2 --port 9090
      coda-bridge start --one-process              # one process for the whole node
    """
    from ..ops.supervisor import run_start, start_detached  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    # every process would fail on a malformed URL, and restart: refuse it before starting any
    settings = node_settings(site, host=host, port=port)
    check_redis_urls(settings)
    require_credentials(settings, token)  # exit 78, like `bridge`: restarting cannot help
    require_executor(settings)  # exit 78: never the no-op executor's fake results by default
    require_dashboard(settings)  # exit 78: before the token is spent, not from the web part after the connect
    if not daemon:
        sys.exit(run_start(settings, token=token, host=host, port=port, site=site, one_process=one_process))
    pid, log = start_detached(settings, token=token, host=host, port=port, site=site, one_process=one_process)
    click.echo(f"coda-bridge started in the background and is ready (pid {pid}); log: {log}")


@click.command()
@site_option
def stop(site: str | None) -> None:
    """Stop the node started with `start` (drains first, like Ctrl-C).

    \b
    Example:
      coda-bridge stop
    """
    from ..ops.pidfile import pid_file_for, running_pid  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    settings = plain_settings(site)
    pid_file = pid_file_for(settings.state_dir)
    pid = running_pid(pid_file)
    if pid is None:
        _stop_node(pid_file, settings.shutdown_drain_timeout_sec)  # clears a stale pid file
        click.echo("coda-bridge is not running")
        return
    click.echo(
        f"stopping coda-bridge (pid {pid}); draining for up to {settings.shutdown_drain_timeout_sec:g} s"
    )
    outcome = _stop_node(pid_file, settings.shutdown_drain_timeout_sec)
    how = "killed after the drain timeout" if outcome.forced else "stopped"
    click.echo(f"coda-bridge (pid {outcome.pid}) {how} in {outcome.seconds:.1f} s")


def _stop_node(pid_file: Any, drain_timeout_sec: float) -> Any:
    """``stop_node``, with a pid file that cannot be used (a directory in its place...) as one line."""
    from ..ops.daemon import stop_node  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    try:
        return stop_node(pid_file, drain_timeout_sec)
    except OSError as exc:
        raise ConfigError(f"cannot use the pid file {pid_file}: {exc.strerror or exc}") from None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@site_option
def status(as_json: bool, site: str | None) -> None:
    """Show whether the node runs or why it stopped, readiness, executor, heartbeat, queues (exit 3: stopped).

    Every process of the node registers itself in the broker, so the list
    is the same however it was started: `start`, honcho, systemd, or on
    several hosts.

    \b
    Examples:
      coda-bridge status
      coda-bridge status --json
    """
    from ..ops.nodestatus import node_status, status_lines  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    plain = plain_settings(site)
    node, problem, broker_problem = None, None, None
    try:
        node = node_settings(site)
    except ConfigError as exc:
        problem = str(exc)
    else:
        try:
            check_redis_urls(node, ("broker_url",))
        except ConfigError as exc:
            broker_problem = str(exc)
    report = node_status(plain, node, problem, broker_problem)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in status_lines(report):
            click.echo(line)
    sys.exit(3 if report["state"] == "stopped" else 0)


@click.command()
@click.option("-n", "--lines", default=50, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to quit).")
@site_option
def logs(lines: int, follow: bool, site: str | None) -> None:
    """Show the log of the node started with `start --daemon`.

    \b
    Examples:
      coda-bridge logs -n 5
      coda-bridge logs -f
    """
    from ..identity.credentials import StatePaths  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..ops.daemon import follow as follow_lines  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..ops.daemon import tail  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    path = StatePaths(plain_settings(site).state_dir).daemon_log
    if not path.exists():
        raise ConfigError(f"no log file at {path}: the node has not been started with --daemon here")
    for line in tail(path, lines):
        click.echo(line)
    if follow:
        try:
            for line in follow_lines(path):
                click.echo(line)
        except KeyboardInterrupt:
            return


@click.command("stop-vpn")
def stop_vpn() -> None:
    """Stop the OpenVPN daemon this node started.

    \b
    Example:
      coda-bridge stop-vpn
    """
    _stop_vpn(node_settings())
    click.echo("OpenVPN stopped (or was not running)")


def _stop_vpn(settings: Any) -> None:
    try:
        from ..vpn.openvpn import OpenVPNManager  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    except ImportError as exc:
        raise ConfigError(f"the VPN support cannot be loaded: {exc}") from None
    OpenVPNManager().stop(settings)


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def reset(yes: bool) -> None:
    """Stop the node and the VPN, and delete every persisted file (credentials included).

    The first runtime's credentials and VPN profile in the temporary
    directory (coda-node 0.1.1's) go too.  The next start needs a fresh node token.

    \b
    Example:
      coda-bridge reset --yes
    """
    from ..identity.connect import legacy_dir  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..identity.credentials import StatePaths, reset_legacy, reset_state  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..ops.outcome import forget_exit  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..ops.pidfile import pid_file_for  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    settings = plain_settings()
    paths = StatePaths(settings.state_dir)
    if paths.root.exists() and not paths.root.is_dir():
        raise ConfigError(f"cannot reset {paths.root}: it is not a directory (see CODA_STATE_DIR)")
    if not yes and not click.confirm(f"Delete the node's credentials and state in {paths.root}?"):
        click.echo("Aborted: nothing changed.", err=True)  # a declined confirmation exits 1, as click's does
        sys.exit(1)
    outcome = _stop_node(pid_file_for(settings.state_dir), settings.shutdown_drain_timeout_sec)
    if outcome.pid:
        click.echo(f"stopped coda-bridge (pid {outcome.pid})")
    try:
        _stop_vpn(settings)
    except CodaError as exc:
        click.echo(f"warning: {mask(str(exc))}", err=True)
    try:
        removed = reset_state(settings.state_dir) + reset_legacy(legacy_dir())
    except OSError as exc:
        raise ConfigError(f"cannot delete {exc.filename or paths.root}: {exc.strerror or exc}") from None
    removed += [path for path in (forget_exit(paths.root),) if path is not None]
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"reset: {len(removed)} file(s) removed; start again with a new node token")
