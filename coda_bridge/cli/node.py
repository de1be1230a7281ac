"""Commands over the node as a whole: ``start``, ``stop``, ``status``, ``logs``, ``stop-vpn``, ``reset``.

Each is a thin layer: ``start`` over :mod:`~coda_bridge.ops.supervisor`,
``stop``/``status``/``logs`` over :mod:`~coda_bridge.ops.daemon`.
"""

from __future__ import annotations

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
    from ..ops.supervisor import run_start, start_detached

    # every process would fail on a malformed URL, and restart: refuse it before starting any
    settings = node_settings(site, host=host, port=port)
    check_redis_urls(settings)
    require_credentials(settings, token)  # exit 78, like `bridge`: restarting cannot help
    require_executor(settings)  # exit 78: never the no-op executor's fake results by default
    if not daemon:
        sys.exit(run_start(token=token, host=host, port=port, site=site, one_process=one_process))
    pid, log = start_detached(token=token, host=host, port=port, site=site, one_process=one_process)
    click.echo(f"coda-bridge started in the background (pid {pid}); log: {log}")


@click.command()
@site_option
def stop(site: str | None) -> None:
    """Stop the node started with `start` (drains first, like Ctrl-C).

    \b
    Example:
      coda-bridge stop
    """
    from ..identity.credentials import StatePaths
    from ..ops.daemon import running_pid

    settings = plain_settings(site)
    paths = StatePaths(settings.state_dir)
    pid = running_pid(paths.daemon_pid)
    if pid is None:
        _stop_node(paths, settings.shutdown_drain_timeout_sec)  # clears a stale pid file
        click.echo("coda-bridge is not running")
        return
    click.echo(
        f"stopping coda-bridge (pid {pid}); draining for up to {settings.shutdown_drain_timeout_sec:g} s"
    )
    outcome = _stop_node(paths, settings.shutdown_drain_timeout_sec)
    how = "killed after the drain timeout" if outcome.forced else "stopped"
    click.echo(f"coda-bridge (pid {outcome.pid}) {how} in {outcome.seconds:.1f} s")


def _stop_node(paths: Any, drain_timeout_sec: float) -> Any:
    """``stop_node``, with a pid file that cannot be used (the state directory is a file...) as one line."""
    from ..ops.daemon import stop_node

    try:
        return stop_node(paths.daemon_pid, drain_timeout_sec)
    except OSError as exc:
        raise ConfigError(f"cannot use the pid file {paths.daemon_pid}: {exc.strerror or exc}") from None


@click.command()
@site_option
def status(site: str | None) -> None:
    """Show whether the node runs, its processes, QPU, queue depths and VPN interface (exit 3 when stopped).

    Every process of the node registers itself in the broker, so the list
    is the same however it was started: `start`, honcho, systemd, or on
    several hosts.

    \b
    Example:
      coda-bridge status
    """
    from ..identity.credentials import StatePaths
    from ..ops.daemon import running_pid
    from ..ops.doctor import process_lines, queue_summary, vpn_summary

    settings = plain_settings(site)
    paths = StatePaths(settings.state_dir)
    pid = running_pid(paths.daemon_pid)
    details: list[str] = []
    processes: list[str] = []
    try:
        settings = node_settings(site)
    except ConfigError as exc:
        details.append(f"qpu:         unknown ({exc})")
    else:
        qpu = settings.qpu_id or "not provisioned yet"
        if settings.qpu_id and settings.qpu_display_name:
            qpu += f" ({settings.qpu_display_name})"
        details.append(f"qpu:         {qpu}")
        try:
            check_redis_urls(settings, ("broker_url",))
        except ConfigError as exc:
            queues = f"unknown ({exc})"
        else:
            queues = queue_summary(settings)
            processes, problem = process_lines(settings)
            details.append(f"processes:   {problem or (processes[0] if processes else 'none registered')}")
            details.extend(f"             {line}" for line in processes[1:])
        details.append(f"queues:      {queues}")
        details.append(f"vpn:         {vpn_summary(settings)}")
    if pid:
        state = f"running (pid {pid})"
    elif processes:
        state = f"running ({len(processes)} registered process(es), not started by `coda-bridge start` here)"
    else:
        state = "stopped"
    click.echo(f"coda-bridge: {state}")
    click.echo(f"log file:    {paths.daemon_log}")
    for line in details:
        click.echo(line)
    sys.exit(0 if pid or processes else 3)


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
    from ..identity.credentials import StatePaths
    from ..ops.daemon import follow as follow_lines
    from ..ops.daemon import tail

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
        from ..vpn.openvpn import OpenVPNManager
    except ImportError as exc:
        raise ConfigError(f"the VPN support cannot be loaded: {exc}") from None
    OpenVPNManager().stop(settings)


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def reset(yes: bool) -> None:
    """Stop the node and the VPN, and delete every persisted file (credentials included).

    The next start needs a fresh node token.

    \b
    Example:
      coda-bridge reset --yes
    """
    from ..identity.credentials import StatePaths, reset_state

    settings = plain_settings()
    paths = StatePaths(settings.state_dir)
    if not yes:
        click.confirm(f"Delete the node's credentials and state in {paths.root}?", abort=True)
    outcome = _stop_node(paths, settings.shutdown_drain_timeout_sec)
    if outcome.pid:
        click.echo(f"stopped coda-bridge (pid {outcome.pid})")
    try:
        _stop_vpn(settings)
    except CodaError as exc:
        click.echo(f"warning: {mask(str(exc))}", err=True)
    try:
        removed = reset_state(settings.state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot delete {exc.filename or paths.root}: {exc.strerror or exc}") from None
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"reset: {len(removed)} file(s) removed; start again with a new node token")
