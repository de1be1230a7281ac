"""The ``coda-bridge`` (and ``coda``) command line: one click group, every command registered here.

Heavy imports happen inside the commands, so ``--help`` is quick.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import CodaError
from ..logs import mask
from ..version import __version__
from . import job, node, pause, processes, tools
from .options import safe_url

__all__ = ["cli", "main"]


class _NodeGroup(click.Group):
    """The command group, with the simulator's ``devcloud`` group loaded only when it is asked for.

    Loading it imports the simulator (its Flask app among it): a node process
    started as ``coda-bridge bridge`` should not pay for that.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "devcloud"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "devcloud" and cmd_name not in self.commands:
            group = tools.devcloud_group()
            if group is None:
                return None
            self.add_command(group, "devcloud")
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_NodeGroup,
    invoke_without_command=True,  # for `--reset` alone
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="coda-bridge")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--reset",
    "reset_state",
    is_flag=True,
    help="Without a command: `reset --yes` (coda-node 0.1.1's `coda --reset`, which does not ask).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, reset_state: bool) -> None:
    """coda-bridge: connect a quantum execution backend to the Coda cloud.

    \b
    Examples:
      coda-bridge demo                      # a whole node on this machine
      coda-bridge start --token "$TOKEN"    # run a real node
      coda-bridge --reset                   # forget the node (as coda-node's `coda --reset`)
    """
    # --debug is read by main() before click runs: it shows tracebacks instead of one line.
    if reset_state:
        if ctx.invoked_subcommand is not None:
            # coda-node 0.1.1 reset and then ignored the command; doing half of what was typed is worse
            raise click.UsageError(
                f"--reset takes no command; nothing was done: run `coda-bridge --reset`, "
                f"then `coda-bridge {ctx.invoked_subcommand} ...`"
            )
        ctx.invoke(node.reset, yes=True)
    elif ctx.invoked_subcommand is None:
        raise click.UsageError("Missing command.")


for _command in (
    node.start,
    node.stop,
    node.status,
    node.logs,
    node.stop_vpn,
    pause.pause,
    pause.resume,
    job.job,
    node.reset,
    processes.bridge,
    processes.worker,
    processes.web,
    processes.replay,
    tools.doctor,
    tools.submit,
    tools.demo,
):
    cli.add_command(_command)


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
    except Exception as exc:
        message = _library_error(exc)
        if message is None or "--debug" in args:
            raise
        click.echo(f"error: {mask(message)}", err=True)
        sys.exit(1)


def _library_error(exc: Exception) -> str | None:
    """One line for a redis or requests error no command converted (the last safety net), else None.

    Looked up in ``sys.modules``: a library that was never imported cannot have raised.
    """
    redis = sys.modules.get("redis")
    if redis is not None and isinstance(exc, redis.RedisError):
        text = " ".join(str(exc).split()) or type(exc).__name__
        return f"Redis error ({type(exc).__name__}): {text}"
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(exc, requests.RequestException):
        # str(exc) repeats the whole URL, query string (and any token in it) included
        request = getattr(exc, "request", None)
        url = getattr(request, "url", None)
        where = f" to {safe_url(url).partition('?')[0]}" if url else ""
        response = getattr(exc, "response", None)
        status = f", HTTP {response.status_code}" if response is not None else ""
        return f"HTTP request{where} failed ({type(exc).__name__}{status})"
    return None
