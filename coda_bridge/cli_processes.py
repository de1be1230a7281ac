"""The single-process commands of ``coda-bridge``: ``bridge``, ``worker``, ``web`` and ``replay``.

``start`` runs the whole node under a supervisor; these commands run one
of its processes on its own (under systemd, honcho or by hand), and
``replay`` re-queues dead-lettered results.  They live apart so that
:mod:`~coda_bridge.cli` keeps to the group, its shared options and the
commands for the node as a whole.  Importing this module registers the
commands on that same ``cli`` group; :mod:`~coda_bridge.cli` imports it.
"""

from __future__ import annotations

import os

import click

from .cli import Unrecoverable, _host_option, _plain_settings, _port_option, _settings, cli
from .errors import AuthError, ConfigError, NodeError
from .logs import configure_logging

__all__ = ["bridge", "worker", "web", "replay"]


@cli.command()
@click.option(
    "--token", envvar="CODA_NODE_TOKEN", show_envvar=True, help="One-time node token (first start only)."
)
def bridge(token: str | None) -> None:
    """Run the stream bridge: connect, then move cloud jobs into the local queue.

    \b
    Example:
      coda-bridge bridge --token "$NODE_TOKEN"
    """
    from .node import run_bridge

    configure_logging()
    try:
        run_bridge(token=token)
    except (ConfigError, AuthError) as exc:
        raise Unrecoverable(str(exc)) from exc
    except NodeError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            raise Unrecoverable(str(exc)) from exc
        raise


@cli.command()
@click.argument("queue", type=str)
def worker(queue: str) -> None:
    """Run the dramatiq worker of one queue (jobs, results or control) exactly as `start` runs it.

    A suffix after a dot is ignored (``jobs.2``), so systemd instances and
    honcho-style names can scale executor workers.

    \b
    Examples:
      coda-bridge worker jobs
      coda-bridge worker results
    """
    from .processes import node_processes

    name = queue.split(".", 1)[0]
    specs = {
        spec.name: spec for spec in node_processes(_plain_settings(), web=False) if spec.name != "bridge"
    }
    if name not in specs:
        raise click.BadParameter(f"expected one of {', '.join(specs)}", param_hint="QUEUE")
    argv = list(specs[name].argv)
    os.execv(argv[0], argv)


@cli.command()
@_host_option
@_port_option
def web(host: str | None, port: int | None) -> None:
    """Serve the probes app (/health, /ready, /metrics) with gunicorn.

    \b
    Example:
      coda-bridge web --port 8080
    """
    try:
        from .web import serve
    except ModuleNotFoundError as exc:
        if exc.name != "coda_bridge.web":
            raise
        raise Unrecoverable("the probes app (coda_bridge.web) is not installed") from None
    try:
        settings = _settings(host=host, port=port)
    except ConfigError as exc:
        raise Unrecoverable(str(exc)) from exc
    serve(settings)


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
