"""``pause`` and ``resume``: the node takes no new job for a while, and keeps heartbeating.

Both write node state in the broker Redis (:mod:`~coda_bridge.control.pause_book`),
so they work from any host that reaches the broker, whether the node runs or not.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError
from .options import check_redis_urls, node_settings, redis_errors, site_option

__all__ = ["pause", "resume"]


def _book(site: str | None) -> Any:
    from ..components import NodeComponents  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..control.pause_book import PauseBook  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    settings = node_settings(site)
    check_redis_urls(settings, ("broker_url",))
    if not settings.qpu_id:
        raise ConfigError("the node has no QPU id yet: start it once with its token, then pause it")
    return PauseBook(NodeComponents(settings, signs=False).local_redis, settings.qpu_id), settings


@click.command()
@click.option(
    "--for",
    "duration",
    default="5m",
    show_default=True,
    help="How long: 20s, 5m, 2h, 7d (at most 7d); the node resumes by itself at the end.",
)
@click.option("--note", default="", help="Why, shown by status, /ready, /metrics and the status page.")
@site_option
def pause(duration: str, note: str, site: str | None) -> None:
    """Take no new job: running jobs finish, new ones wait in the cloud's stream, heartbeats go on.

    \b
    Examples:
      coda-bridge pause --for 2h --note "fridge warm-up"
      coda-bridge resume
    """
    from ..control.pause_book import parse_duration  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    try:
        seconds = parse_duration(duration)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    book, settings = _book(site)
    with redis_errors("the broker", settings.broker_url):
        record = book.pause(seconds, note)
    click.echo(
        f"Paused {settings.qpu_id} until {record.as_dict()['until']}: running jobs finish, no new one "
        "starts; `coda-bridge resume` ends it early."
    )


@click.command()
@site_option
def resume(site: str | None) -> None:
    """End a pause now: the node takes jobs again.

    \b
    Examples:
      coda-bridge resume
      coda-bridge resume --site lab-fridge-2
    """
    book, settings = _book(site)
    with redis_errors("the broker", settings.broker_url):
        ended = book.resume()
    click.echo(f"Resumed {settings.qpu_id}." if ended else f"{settings.qpu_id} was not paused.")
