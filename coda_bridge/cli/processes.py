"""The single-process commands of ``coda-bridge``: ``bridge``, ``worker``, ``web`` and ``replay``.

``start`` runs the whole node under a supervisor; these commands run one
of its processes on its own (under systemd, honcho or by hand), and
``replay`` re-queues dead-lettered results.
"""

from __future__ import annotations

import os

import click

from ..errors import AuthError, CodaError, ConfigError, NodeError
from ..logs import configure_logging
from .options import (
    Unrecoverable,
    check_redis_urls,
    host_option,
    node_settings,
    plain_settings,
    port_option,
    redis_errors,
    token_option,
)

__all__ = ["bridge", "worker", "web", "replay"]


@click.command()
@token_option
def bridge(token: str | None) -> None:
    """Run the stream bridge: connect, then move cloud jobs into the local queue.

    \b
    Example:
      coda-bridge bridge --token "$NODE_TOKEN"
    """
    from ..lean_imports import import_dynaconf_without_flask  # noqa: PLC0415 - CLI start-up, as below
    from ..ops.runners import StopSignal, run_bridge_main  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    import_dynaconf_without_flask()  # as under `start`: no process of the bridge serves Flask
    configure_logging()
    stop = StopSignal().install()  # as under `start`: a first SIGTERM drains, a second ends it at once
    try:
        settings = node_settings()  # the one load of this process start
        check_redis_urls(settings)  # before a one-time token is spent on connecting
        run_bridge_main(settings, token, stop)
    except (ConfigError, AuthError) as exc:
        raise Unrecoverable(str(exc)) from exc
    except NodeError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            raise Unrecoverable(str(exc)) from exc
        raise


@click.command()
@click.argument("queue", type=str)
def worker(queue: str) -> None:
    """Run the dramatiq worker of one queue (jobs, results or control) as the Procfile runs it.

    A suffix after a dot is ignored (``jobs.2``), so systemd instances and
    honcho-style names can scale executor workers.

    \b
    Examples:
      coda-bridge worker jobs
      coda-bridge worker results
    """
    from ..ops.process_list import node_processes  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    name = queue.split(".", 1)[0]
    specs = {spec.name: spec for spec in node_processes(plain_settings(), web=False) if spec.name != "bridge"}
    if name not in specs:
        raise click.BadParameter(f"expected one of {', '.join(specs)}", param_hint="QUEUE")
    # dramatiq would only fail on these inside its worker processes, with tracebacks, and be restarted
    from ..identity.waiting import check_role  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    try:
        settings = node_settings()
        check_redis_urls(settings)
        check_role(settings, name)
    except ConfigError as exc:
        raise Unrecoverable(str(exc)) from None
    argv = list(specs[name].argv)
    os.execv(argv[0], argv)


@click.command()
@host_option
@port_option
def web(host: str | None, port: int | None) -> None:
    """Serve the probes app (/health, /ready, /metrics, the status page /status/) with gunicorn.

    \b
    Example:
      coda-bridge web --port 8080
    """
    try:
        from ..web.probes_app import check_dashboard, serve  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    except ModuleNotFoundError as exc:
        if exc.name != "coda_bridge.web.probes_app":
            raise
        raise Unrecoverable("the probes app (coda_bridge.web.probes_app) is not installed") from None
    try:
        settings = node_settings(host=host, port=port)
        check_redis_urls(settings)
        check_dashboard(settings)
    except ConfigError as exc:
        raise Unrecoverable(str(exc)) from exc
    serve(settings)


@click.command()
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
    from ..identity.waiting import wait_for_identity  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..pipeline.deadletters import dead_letters, replay_dead_letters  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..pipeline.timeline import Timeline  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..queueing.redis_broker import create_broker  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    settings = wait_for_identity(timeout_sec=0)
    check_redis_urls(settings, ("broker_url",))
    with redis_errors("the broker", settings.broker_url, "start the local Redis or set CODA_BROKER_URL"):
        broker = create_broker(settings)
        try:
            letters = dead_letters(broker)
            if list_only:
                for letter in letters:
                    line = f"{letter.job_id}\tretries={letter.retries}\t{letter.callback_url}"
                    line += f"\t{letter.reason}" if letter.reason else ""
                    click.echo(line if letter.queue == "results" else f"{line}\t({letter.queue} queue)")
                results = sum(1 for letter in letters if letter.queue == "results")
                click.echo(f"{results} dead-lettered result(s)")
                if len(letters) > results:
                    click.echo(f"{len(letters) - results} dead-lettered job message(s)")
                return
            timeline = Timeline(
                broker.client, str(settings.qpu_id), retention_sec=settings.record_retention_sec
            )
            replayed = replay_dead_letters(broker, set(job_ids) if job_ids else None, timeline=timeline)
        finally:
            broker.close()
    if replayed or not job_ids:
        click.echo(f"re-queued {len(replayed)} dead-lettered message(s)")
    found = {job_id for letter in replayed for job_id in letter.job_id.split(",")}
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        raise CodaError(
            f"no dead-lettered message for job(s) {', '.join(missing)}; "
            "`coda-bridge replay --list` lists them"
        )
