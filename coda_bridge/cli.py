"""The ``coda-bridge`` (and ``coda``) command line.

Each command is a thin layer over one module: ``start`` over
:mod:`~coda_bridge.supervisor`, ``stop``/``status``/``logs`` over
:mod:`~coda_bridge.daemon`, ``doctor`` over :mod:`~coda_bridge.doctor`,
``submit`` over :mod:`~coda_bridge.submit`, ``demo`` over
:mod:`~coda_bridge.demo`.  The single-process commands (``bridge``,
``worker``, ``web``, ``replay``) live in :mod:`~coda_bridge.cli_processes`.
Heavy imports happen inside the commands, so ``--help`` is quick.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import CodaError, ConfigError
from .logs import mask
from .respawn import EX_CONFIG

__all__ = ["cli", "main"]

#: Default address of the local cloud simulator (``coda-bridge devcloud``).
DEFAULT_DEVCLOUD_URL = "http://127.0.0.1:8765"


class Unrecoverable(CodaError):
    """A process cannot work as configured; it exits with ``EX_CONFIG`` so it is not restarted."""

    exit_code = EX_CONFIG


def _settings(site: str | None = None, **overrides: Any) -> Any:
    from .identity import load_node_settings

    return load_node_settings(overrides=overrides, site=site)


def _plain_settings(site: str | None = None) -> Any:
    """Settings without the persisted layer: enough to find the state directory."""
    from .settings import load_settings

    return load_settings(site=site)


_host_option = click.option("--host", help="Address of the probes app (overrides CODA_HOST).")
_port_option = click.option("--port", type=int, help="Port of the probes app (overrides CODA_PORT).")
_site_option = click.option("--site", help="Site table of config/settings.toml to use (sets CODA_ENV).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coda-bridge")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """coda-bridge: connect a quantum execution backend to the Coda cloud.

    \b
    Examples:
      coda-bridge demo                      # a whole node on this machine
      coda-bridge start --token "$TOKEN"    # run a real node
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# -- running the node --


@cli.command()
@click.option(
    "--token", envvar="CODA_NODE_TOKEN", show_envvar=True, help="One-time node token (first start only)."
)
@_host_option
@_port_option
@click.option("--daemon", "-d", is_flag=True, help="Run in the background; log to the state directory.")
@_site_option
def start(token: str | None, host: str | None, port: int | None, daemon: bool, site: str | None) -> None:
    """Run the whole node: bridge, workers and probes app, supervised.

    The first Ctrl-C or SIGTERM drains (jobs in flight finish, within
    shutdown_drain_timeout_sec); a second one stops at once.

    \b
    Examples:
      coda-bridge start --token "$NODE_TOKEN"     # first start: provision
      coda-bridge start -d                         # later starts, in the background
      coda-bridge start --site lab2 --port 9090
    """
    from .supervisor import run_start, start_detached

    if not daemon:
        sys.exit(run_start(token=token, host=host, port=port, site=site))
    pid, log = start_detached(token=token, host=host, port=port, site=site)
    click.echo(f"coda-bridge started in the background (pid {pid}); log: {log}")


@cli.command()
@_site_option
def stop(site: str | None) -> None:
    """Stop the node started with `start` (drains first, like Ctrl-C).

    \b
    Example:
      coda-bridge stop
    """
    from .daemon import running_pid, stop_node
    from .state import StatePaths

    settings = _plain_settings(site)
    paths = StatePaths(settings.state_dir)
    pid = running_pid(paths.daemon_pid)
    if pid is None:
        stop_node(paths.daemon_pid, settings.shutdown_drain_timeout_sec)  # clears a stale pid file
        click.echo("coda-bridge is not running")
        return
    click.echo(
        f"stopping coda-bridge (pid {pid}); draining for up to {settings.shutdown_drain_timeout_sec:g} s"
    )
    outcome = stop_node(paths.daemon_pid, settings.shutdown_drain_timeout_sec)
    how = "killed after the drain timeout" if outcome.forced else "stopped"
    click.echo(f"coda-bridge (pid {outcome.pid}) {how} in {outcome.seconds:.1f} s")


@cli.command()
@_site_option
def status(site: str | None) -> None:
    """Show whether the node runs, its QPU, queue depths and VPN interface (exit 3 when stopped).

    \b
    Example:
      coda-bridge status
    """
    from .daemon import running_pid
    from .doctor import queue_summary, vpn_summary
    from .state import StatePaths

    settings = _plain_settings(site)
    paths = StatePaths(settings.state_dir)
    pid = running_pid(paths.daemon_pid)
    click.echo(f"coda-bridge: {f'running (pid {pid})' if pid else 'stopped'}")
    click.echo(f"log file:    {paths.daemon_log}")
    try:
        settings = _settings(site)
    except ConfigError as exc:
        click.echo(f"qpu:         unknown ({exc})")
    else:
        qpu = f"{settings.qpu_id} ({settings.qpu_display_name})" if settings.qpu_id else "not provisioned yet"
        click.echo(f"qpu:         {qpu}")
        click.echo(f"queues:      {queue_summary(settings)}")
        click.echo(f"vpn:         {vpn_summary(settings)}")
    sys.exit(0 if pid else 3)


@cli.command()
@click.option("-n", "--lines", default=50, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to quit).")
@_site_option
def logs(lines: int, follow: bool, site: str | None) -> None:
    """Show the log of the node started with `start --daemon`.

    \b
    Examples:
      coda-bridge logs -n 5
      coda-bridge logs -f
    """
    from .daemon import follow as follow_lines
    from .daemon import tail
    from .state import StatePaths

    path = StatePaths(_plain_settings(site).state_dir).daemon_log
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


@cli.command()
@_site_option
def doctor(site: str | None) -> None:
    """Check settings, credentials, endpoints, executor, both Redis and the VPN (exit 1 on a problem).

    \b
    Example:
      coda-bridge doctor
    """
    from .doctor import run_checks

    checks = run_checks(site=site)
    for check in checks:
        click.echo(mask(check.line()))
    failed = sum(1 for check in checks if not check.ok)
    click.echo(f"{len(checks) - failed} ok, {failed} to fix")
    if failed:
        sys.exit(1)


@cli.command("stop-vpn")
def stop_vpn() -> None:
    """Stop the OpenVPN daemon this node started.

    \b
    Example:
      coda-bridge stop-vpn
    """
    _stop_vpn(_settings())
    click.echo("OpenVPN stopped (or was not running)")


def _stop_vpn(settings: Any) -> None:
    try:
        from .vpn.openvpn import OpenVPNManager
    except ImportError as exc:
        raise ConfigError(f"the VPN support cannot be loaded: {exc}") from None
    OpenVPNManager().stop(settings)


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def reset(yes: bool) -> None:
    """Stop the node and the VPN, and delete every persisted file (credentials included).

    The next start needs a fresh node token.

    \b
    Example:
      coda-bridge reset --yes
    """
    from .daemon import stop_node
    from .state import StatePaths, reset_state

    settings = _plain_settings()
    paths = StatePaths(settings.state_dir)
    if not yes:
        click.confirm(f"Delete the node's credentials and state in {paths.root}?", abort=True)
    outcome = stop_node(paths.daemon_pid, settings.shutdown_drain_timeout_sec)
    if outcome.pid:
        click.echo(f"stopped coda-bridge (pid {outcome.pid})")
    try:
        _stop_vpn(settings)
    except CodaError as exc:
        click.echo(f"warning: {mask(str(exc))}", err=True)
    removed = reset_state(settings.state_dir)
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"reset: {len(removed)} file(s) removed; start again with a new node token")


# -- the single processes: bridge, worker, web, replay (in cli_processes) --

from . import cli_processes  # noqa: E402, F401  (registers its commands on `cli`, in this order)

# -- trying it out --


@cli.command()
@click.argument("circuit", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--devcloud-url",
    envvar="CODA_DEVCLOUD_URL",
    default=DEFAULT_DEVCLOUD_URL,
    show_default=True,
    help="The local cloud simulator.",
)
@click.option("--qpu", "qpu_id", envvar="CODA_QPU_ID", help="QPU id (default: the simulator's only QPU).")
@click.option("--shots", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--target",
    type=click.Choice(["cz", "iswap", "pcz", "cnot"]),
    help="Gate set to convert OpenQASM to (default: the QPU's).",
)
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds --wait waits.")
def submit(  # noqa: PLR0917  (one parameter per click option)
    circuit: Path,
    devcloud_url: str,
    qpu_id: str | None,
    shots: int,
    target: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send a circuit (IR JSON, or OpenQASM 3) to a QPU through the local cloud simulator.

    \b
    Examples:
      coda-bridge submit bell.qasm --qpu my-qpu --shots 500 --wait
      coda-bridge submit circuit.json --devcloud-url http://127.0.0.1:8765
    """
    from .devcloud.client import DevCloudClient
    from .submit import format_result, submit_circuit

    client = DevCloudClient(devcloud_url)
    job_id, _ = submit_circuit(client, circuit, qpu_id=qpu_id, shots=shots, target=target)
    click.echo(job_id)
    if wait:
        try:
            result = client.wait_for_result(job_id, timeout_sec=timeout)
        except TimeoutError as exc:
            raise CodaError(f"{exc}; is a node running for this QPU?") from None
        click.echo(format_result(result))
        if result.get("status") != "completed":
            sys.exit(1)


@cli.command()
@click.option("--shots", type=click.IntRange(100), default=1000, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep logs and state here (default: a temporary directory, removed afterwards).",
)
def demo(shots: int, workdir: Path | None) -> None:
    """Run a whole local node, submit sample circuits and check every result (needs nothing set up).

    \b
    Example:
      coda-bridge demo
    """
    from .demo import run_demo

    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    if not run_demo(shots=shots, workdir=workdir):
        sys.exit(1)


def _mount_devcloud() -> None:
    try:
        from .devcloud.cli import devcloud
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    group = copy.copy(devcloud)
    group.epilog = (
        "\b\nExamples:\n"
        "  coda-bridge devcloud --port 8765 --redis-url redis://127.0.0.1:6379/0\n"
        "  coda-bridge devcloud create-qpu my-qpu --num-qubits 5\n"
        "  coda-bridge devcloud mint-token my-qpu"
    )
    cli.add_command(group, "devcloud")


_mount_devcloud()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: one readable line and a non-zero exit for our errors; tracebacks only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return cli.main(args=args, prog_name="coda-bridge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CodaError as exc:
        if "--debug" in args:
            raise
        click.echo(f"error: {mask(str(exc))}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        sys.exit(130)
