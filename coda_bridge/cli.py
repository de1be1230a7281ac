"""The ``coda-bridge`` (and ``coda``) command line."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import __version__
from .errors import CodaError
from .logs import configure_logging, mask

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coda-bridge")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """coda-bridge: connect a quantum execution backend to the Coda cloud."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.option("--token", envvar="CODA_NODE_TOKEN", help="One-time node token (first start only).")
def bridge(token: str | None) -> None:
    """Run the stream bridge: connect, then move cloud jobs into the local queue.

    \b
    Example:
      coda-bridge bridge --token "$NODE_TOKEN"
    """
    from .node import run_bridge

    configure_logging()
    run_bridge(token=token)


@cli.command()
@click.option("--list", "list_only", is_flag=True, help="Only list the dead-lettered results.")
@click.argument("job_ids", nargs=-1)
def replay(list_only: bool, job_ids: tuple[str, ...]) -> None:
    """List, and deliver again, results that ran out of delivery retries.

    \b
    Examples:
      coda-bridge replay --list
      coda-bridge replay            # every dead-lettered result
      coda-bridge replay j-17 j-18  # only these jobs
    """
    from .broker import create_broker
    from .delivery import dead_letters, replay_dead_letters
    from .runtime import wait_for_identity

    settings = wait_for_identity(timeout_sec=0)
    broker = create_broker(settings)
    letters = dead_letters(broker)
    if list_only:
        for letter in letters:
            click.echo(f"{letter.job_id}\tretries={letter.retries}\t{letter.callback_url}")
        click.echo(f"{len(letters)} dead-lettered result(s)")
        return
    replayed = replay_dead_letters(broker, set(job_ids) if job_ids else None)
    click.echo(f"re-queued {len(replayed)} result(s) for delivery")


def _mount_devcloud() -> None:
    try:
        from .devcloud.cli import devcloud
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    cli.add_command(devcloud, "devcloud")


_mount_devcloud()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: one readable line and a non-zero exit for our errors; tracebacks only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return cli.main(args=args, standalone_mode=False)
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
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
